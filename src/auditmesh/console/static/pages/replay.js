// Policy replay: run a candidate Istio policy set over the recorded calls, see what changes.
//
// Pick a set kept on the server (DIR/policies/, GET /console/api/policies) or upload YAML
// files, edit them here, choose a window, and POST /v1/policy/replay — the same core as
// `auditmesh policy replay` (policy/replay.py). Read-only: nothing is enforced or stored.

import { api } from "../api.js";
import { badge, clear, errorPanel, eventLink, fmtTime, h, shortEventId } from "../dom.js";

function changeTable(title, changes, kind) {
  if (!changes.length) return h("p", { class: "dim" }, `${title}: none.`);
  return h(
    "div",
    {},
    h("h3", {}, title),
    h(
      "table",
      { class: `changes ${kind}` },
      h(
        "thead",
        {},
        h("tr", {}, ["Source", "Destination", "Deciding rule", "Calls", "Example events"].map((t) => h("th", { class: t === "Calls" ? "num" : "" }, t))),
      ),
      h(
        "tbody",
        {},
        changes.map((c) =>
          h(
            "tr",
            {},
            h("td", { class: "mono small" }, c.source),
            h("td", {}, c.destination),
            h("td", { class: "reason" }, c.reason),
            h("td", { class: "num" }, badge(String(c.count), kind)),
            h("td", { class: "evidence" }, c.examples.map((id) => eventLink(id, shortEventId(id)))),
          ),
        ),
      ),
    ),
  );
}

function report(result) {
  const t = result.totals;
  const tile = (label, value, kind, sub) =>
    h("div", { class: `tile ${kind || ""}` }, h("div", { class: "label" }, label), h("div", { class: "value" }, String(value)), h("div", { class: "sub" }, sub || ""));
  return h(
    "div",
    { id: "replay-result" },
    h(
      "div",
      { class: "tiles" },
      tile("Calls replayed", t.calls, "", `${t.events} events in the window, ${t.attested} seen by our sidecars`),
      tile("Newly denied", t.newly_denied, t.newly_denied ? "bad" : "good", `recorded: ${t.recorded.deny} denied`),
      tile("Newly allowed", t.newly_allowed, t.newly_allowed ? "warn" : "good", `candidate: ${t.candidate.allow} allowed`),
      tile("Unchanged", t.unchanged, "", `candidate: ${t.candidate.deny} denied`),
    ),
    h(
      "div",
      { class: "panel" },
      h("p", { class: "dim small" }, `Window ${fmtTime(result.window.since_ns)} – ${fmtTime(result.window.until_ns)}; candidate policies: ${result.policies.join(", ") || "none (everything allowed)"}.`),
      changeTable("Calls the candidate would deny", result.newly_denied, "bad"),
      changeTable("Calls the candidate would allow", result.newly_allowed, "warn"),
      result.caveats.length ? h("div", { class: "panel info small" }, h("strong", {}, "Caveats"), h("ul", {}, result.caveats.map((c) => h("li", {}, c)))) : "",
    ),
  );
}

export async function renderReplay(main) {
  const stored = (await api("/console/api/policies")).files;
  let files = stored.map((f) => ({ ...f }));
  let active = 0;

  const tabs = h("div", { class: "row", id: "policy-files" });
  const editor = h("textarea", { id: "policy-text", spellcheck: "false", rows: 18, "aria-label": "policy YAML" });
  const upload = h("input", { type: "file", id: "policy-upload", multiple: true, accept: ".yaml,.yml" });
  const since = h("input", { id: "replay-since", value: "24h", size: 12 });
  const until = h("input", { id: "replay-until", placeholder: "now", size: 12 });
  const dryRun = h("input", { type: "checkbox", id: "replay-dry-run" });
  const run = h("button", { type: "submit", id: "replay-run" }, "Replay");
  const out = h("div", { id: "replay-out" });

  const showTabs = () => {
    clear(tabs);
    if (!files.length) tabs.append(h("span", { class: "dim" }, "No files: upload YAML, generate a set, or type into a new file."));
    files.forEach((f, i) =>
      tabs.append(
        h(
          "span",
          { class: "tab" },
          h(
            "button",
            {
              type: "button",
              class: i === active ? "" : "quiet",
              "data-file": f.name,
              onclick: () => {
                active = i;
                editor.value = files[i].text;
                showTabs();
              },
            },
            f.name,
          ),
          h(
            "button",
            {
              type: "button",
              class: "quiet close",
              title: `leave ${f.name} out of the candidate set`,
              "aria-label": `remove ${f.name}`,
              onclick: () => {
                files.splice(i, 1);
                active = Math.min(active, Math.max(0, files.length - 1));
                editor.value = files[active]?.text || "";
                showTabs();
              },
            },
            "×",
          ),
        ),
      ),
    );
  };
  const note = h("span", { class: "dim small", id: "generate-note" });
  const generate = h(
    "button",
    {
      type: "button",
      class: "quiet",
      id: "generate",
      onclick: async () => {
        generate.disabled = true;
        note.textContent = "Generating…";
        try {
          const made = await api("/console/api/policies/generated", { query: { since: since.value.trim() || "24h", until: until.value.trim() } });
          files = files.filter((f) => f.name !== made.file.name).concat([made.file]);
          active = files.length - 1;
          editor.value = made.file.text;
          showTabs();
          note.textContent = `${made.file.name}: least privilege for what the ${made.calls} calls recorded in the window did.`;
        } catch (error) {
          note.textContent = error.message;
        } finally {
          generate.disabled = false;
        }
      },
    },
    "Generate least-privilege set",
  );
  editor.addEventListener("input", () => {
    if (!files.length) files = [{ name: "candidate.yaml", text: "" }];
    files[active].text = editor.value;
  });
  upload.addEventListener("change", async () => {
    for (const file of upload.files) {
      const text = await file.text();
      const at = files.findIndex((f) => f.name === file.name);
      if (at >= 0) files[at] = { name: file.name, text };
      else files.push({ name: file.name, text });
    }
    active = Math.max(0, files.findIndex((f) => f.name === upload.files[0]?.name));
    editor.value = files[active]?.text || "";
    showTabs();
  });
  const reset = h(
    "button",
    {
      type: "button",
      class: "quiet",
      onclick: () => {
        files = stored.map((f) => ({ ...f }));
        active = 0;
        editor.value = files[0]?.text || "";
        showTabs();
      },
    },
    "Server's set",
  );

  const form = h(
    "form",
    {
      class: "replay-form",
      id: "replay-form",
      onsubmit: async (event) => {
        event.preventDefault();
        run.disabled = true;
        document.body.dataset.state = "loading";
        clear(out).append(h("p", { class: "dim" }, "Replaying…"));
        try {
          const result = await api("/v1/policy/replay", {
            method: "POST",
            body: {
              policies: files.filter((f) => f.text.trim()),
              since: since.value.trim() || "24h",
              until: until.value.trim() || null,
              enforce_dry_run: dryRun.checked,
            },
          });
          clear(out).append(report(result));
        } catch (error) {
          clear(out).append(errorPanel(error.message));
        } finally {
          run.disabled = false;
          document.body.dataset.state = "ready";
        }
      },
    },
    h(
      "div",
      { class: "panel" },
      h("h2", {}, "Candidate policy set"),
      h(
        "p",
        { class: "dim small" },
        stored.length
          ? `Starts from the ${stored.length} file(s) kept on the server in DATA/policies/; edit them, upload others, or generate a least-privilege set from the recorded calls of the window. The replay uses every file listed.`
          : "No policy files are kept on the server (DATA/policies/); upload Istio YAML, type it here, or generate a least-privilege set from the recorded calls of the window.",
      ),
      tabs,
      h("div", { class: "spacer-sm" }),
      editor,
      h("div", { class: "row" }, h("label", { for: "policy-upload" }, "Upload .yaml files"), upload, h("span", { class: "spacer" }), generate, reset),
      note,
    ),
    h(
      "div",
      { class: "panel" },
      h("h2", {}, "Recorded calls"),
      h("p", { class: "dim small" }, "Inbound calls recorded in the window are evaluated against the candidate and compared with the decision recorded for them (Istio semantics: DENY before ALLOW; ALLOW policies present and none matching → deny)."),
      h("label", { for: "replay-since" }, "Since (15m, 24h, 7d or RFC 3339)"),
      since,
      h("label", { for: "replay-until" }, "Until"),
      until,
      h("p", {}, h("label", { class: "inline" }, dryRun, " enforce istio.io/dry-run policies too")),
      run,
    ),
  );
  editor.value = files[0]?.text || "";
  showTabs();
  main.append(h("h1", {}, "Policy replay"), form, out);
}
