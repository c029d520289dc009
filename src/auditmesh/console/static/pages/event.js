// One event: every field, and its inclusion proof verified here, in the browser.
//
// GET /v1/events/ID (an audited read) gives the event, its leaf index, an inclusion proof and
// the signed checkpoint note the proof leads to. The exact leaf bytes come from the log's
// public C2SP tlog-tiles entry bundle, so nothing the server computed is trusted: the page
// hashes those bytes, checks they are the event it shows, climbs the proof to a root
// (proof.js) and compares it with the root in the checkpoint whose Ed25519 signature it has
// verified against the log's key.

import { api, bytes, text } from "../api.js";
import {
  badge,
  decisionBadge,
  fmtDurationUs,
  fmtTime,
  h,
  peerName,
  provenanceBadge,
  statusBadge,
  traceLink,
} from "../dom.js";
import {
  b64decode,
  b64encode,
  bundleEntry,
  bytesEqual,
  entryBundleFor,
  hex,
  leafHash,
  parseCheckpoint,
  parseNote,
  parseVerifierKey,
  ProofError,
  rootFromInclusion,
  stableJson,
  subtleAvailable,
  verifyNoteSignature,
} from "../proof.js";
import { verifierKey } from "./keys.js";

/** Dotted paths of every leaf value: {"http": {"status": 200}} → [["http.status", 200]]. */
function flatten(value, prefix = "", out = []) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value).sort();
    if (!keys.length && prefix) out.push([prefix, "{}"]);
    for (const key of keys) flatten(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else {
    out.push([prefix, value]);
  }
  return out;
}

function fieldValue(path, value, event) {
  if (path === "time_ns") return h("span", {}, String(value), h("span", { class: "dim" }, `  ${fmtTime(value)}`));
  if (path === "duration_us") return `${value}  (${fmtDurationUs(value)})`;
  if (path === "trace.trace_id") return traceLink(value);
  if (path === "http.status") return statusBadge(value);
  if (path === "authz.decision") return decisionBadge(value);
  if (path === "outcome") return badge(value, value === "failure" ? "bad" : "good");
  return typeof value === "string" ? value : JSON.stringify(value);
}

function summary(event) {
  const src = peerName(event.source);
  const dst = peerName(event.destination);
  const what = event.http ? `${event.http.method || ""} ${event.http.path || ""}` : event.kind;
  return h(
    "p",
    { class: "summary" },
    h("strong", {}, src),
    " → ",
    h("strong", {}, dst),
    "  ",
    h("span", { class: "mono" }, what),
    "  ",
    statusBadge(event.http?.status),
    " ",
    decisionBadge(event.authz?.decision),
    event.authz?.policy ? h("span", { class: "dim" }, ` by ${event.authz.policy}`) : "",
    "  ",
    provenanceBadge(event),
    h("span", { class: "dim", id: "event-reporter" }, event.attested ? ` by ${event.reporter}` : ` by ${event.reporter}, not seen by a sidecar`),
  );
}

function stepList() {
  const list = h("ol", { class: "steps", id: "proof-steps" });
  return {
    element: list,
    add(ok, title, detail) {
      const mark = ok === true ? "✓" : ok === false ? "✗" : "•";
      const kind = ok === true ? "good" : ok === false ? "bad" : "info";
      list.append(
        h(
          "li",
          { class: kind },
          h("span", { class: "mark", "aria-hidden": "true" }, mark),
          h("span", {}, h("strong", {}, title), detail ? h("span", { class: "detail" }, detail) : ""),
        ),
      );
    },
  };
}

/** Runs every check; returns {ok, message} and reports each step on `steps`. */
export async function verifyRecord(record, vkey, steps) {
  if (!subtleAvailable()) {
    throw new ProofError(
      "this page is not a secure context (HTTPS or localhost), so the browser offers no " +
        "WebCrypto: nothing could be verified here",
    );
  }
  const note = parseNote(record.checkpoint);
  const checkpoint = parseCheckpoint(note.text);
  const key = await parseVerifierKey(vkey);
  let signedBy;
  const signature = await verifyNoteSignature(note, key);
  if (signature === "verified") {
    signedBy = "browser";
    steps.add(true, "Checkpoint signature", ` Ed25519 by ${key.name}+${key.keyId.toString(16).padStart(8, "0")}, verified with WebCrypto`);
  } else {
    signedBy = "server";
    steps.add(null, "Checkpoint signature", " this browser's WebCrypto has no Ed25519: the signature was checked by the server, not here");
  }
  steps.add(true, "Checkpoint", ` ${checkpoint.origin}, tree size ${checkpoint.size}, root ${b64encode(checkpoint.root)}`);
  if (record.proof.tree_size !== checkpoint.size) {
    throw new ProofError(`the proof is for tree size ${record.proof.tree_size}, the checkpoint is of size ${checkpoint.size}`);
  }
  const { path, offset } = entryBundleFor(record.index, checkpoint.size);
  const leaf = bundleEntry(await bytes(path), offset);
  steps.add(true, "Leaf data", ` ${leaf.length} bytes, entry ${offset} of ${path}`);
  let parsed;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(leaf));
  } catch {
    throw new ProofError("the leaf data is not JSON");
  }
  if (stableJson(parsed) !== stableJson(record.event)) {
    const held = new Map(flatten(parsed).map(([k, v]) => [k, JSON.stringify(v)]));
    const shown = new Map(flatten(record.event).map(([k, v]) => [k, JSON.stringify(v)]));
    const differ = [...new Set([...held.keys(), ...shown.keys()])].filter((k) => held.get(k) !== shown.get(k));
    throw new ProofError(
      `the leaf the log holds is not the event this page shows (they differ in ${differ.slice(0, 5).join(", ")})`,
    );
  }
  steps.add(true, "Leaf is this event", " the bytes parse to exactly the fields shown");
  const hash = await leafHash(leaf);
  steps.add(true, "Leaf hash", ` SHA-256(0x00‖data) = ${hex(hash)}`);
  const root = await rootFromInclusion(
    record.index,
    checkpoint.size,
    hash,
    record.proof.hashes.map(b64decode),
  );
  if (!bytesEqual(root, checkpoint.root)) {
    throw new ProofError("the proof does not lead to the signed root", {
      expected: b64encode(checkpoint.root),
      computed: b64encode(root),
    });
  }
  steps.add(true, "Inclusion path", ` ${record.proof.hashes.length} hashes (RFC 9162 §2.1.3.2) lead to the signed root`);
  return {
    message:
      `Verified in your browser: leaf ${record.index} of ${checkpoint.size}, root ${b64encode(root)}` +
      (signedBy === "browser"
        ? ", checkpoint signature verified (Ed25519)."
        : "; the checkpoint signature was checked by the server, the root by your browser."),
  };
}

function proofPanel(record) {
  const verdict = h("div", { class: "verdict pending", id: "proof-verdict", role: "status" }, "Verifying in your browser…");
  const steps = stepList();
  const keyLine = h("p", { class: "dim small", id: "proof-key" });
  const panel = h(
    "div",
    { class: "panel proof", id: "proof" },
    h("h2", {}, "Inclusion proof"),
    verdict,
    steps.element,
    keyLine,
    h(
      "p",
      { class: "small" },
      h(
        "button",
        {
          type: "button",
          class: "quiet",
          id: "proof-save",
          onclick: (event) =>
            saveProof(record).catch((error) => event.target.after(h("span", { class: "badge bad" }, error.message))),
        },
        "Save as C2SP tlog-proof",
      ),
      h("span", { class: "dim" }, "  the file ", h("code", {}, "auditmesh log prove ID"), " writes, to keep or hand on"),
    ),
    h(
      "details",
      {},
      h("summary", {}, "Proof and checkpoint as served"),
      h("p", { class: "small" }, `Leaf index ${record.index}, tree size ${record.proof.tree_size}, ${record.proof.hashes.length} hashes:`),
      h("ol", { class: "hashes mono small", start: 0 }, record.proof.hashes.map((x) => h("li", {}, x))),
      h("pre", { class: "note" }, record.checkpoint),
    ),
  );
  const run = async () => {
    const { vkey, source } = await verifierKey();
    keyLine.replaceChildren(
      `Log key: `,
      h("code", {}, vkey),
      source === "pinned" ? " (the key you pinned in this browser)" : " (as served by this server: compare it with the key your auditor holds, or pin one on the overview page)",
    );
    try {
      const result = await verifyRecord(record, vkey, steps);
      verdict.className = "verdict good";
      verdict.dataset.result = "verified";
      verdict.textContent = result.message;
    } catch (error) {
      verdict.className = "verdict bad";
      verdict.dataset.result = "failed";
      const detail = error.expected ? ` (signed root ${error.expected}, computed ${error.computed})` : "";
      verdict.textContent = `NOT verified: ${error.message}${detail}.`;
      steps.add(false, "Failed", ` ${error.message}${detail}`);
    }
  };
  return { panel, run };
}

/** Download the event's C2SP tlog-proof (GET /v1/proof/inclusion, an audited read). */
async function saveProof(record) {
  const proof = await text(`/v1/proof/inclusion?id=${encodeURIComponent(record.event.id)}`);
  const link = h("a", {
    href: URL.createObjectURL(new Blob([proof], { type: "text/plain" })),
    download: `${record.event.id}.tlog-proof`,
  });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

export async function renderEvent(main, params, rest) {
  const id = rest[0];
  if (!id) throw new Error("no event id in the address");
  const record = await api(`/v1/events/${encodeURIComponent(id)}`);
  const event = record.event;
  const rows = flatten(event).map(([path, value]) =>
    h("tr", {}, h("th", { scope: "row", class: "mono" }, path), h("td", {}, fieldValue(path, value, event))),
  );
  const { panel, run } = proofPanel(record);
  main.append(
    h("h1", {}, "Event ", h("span", { class: "mono" }, event.id)),
    summary(event),
    h(
      "div",
      { class: "split" },
      h(
        "div",
        { class: "panel" },
        h("h2", {}, `All fields · leaf ${record.index}`),
        h("table", { class: "fields", id: "event-fields" }, h("tbody", {}, rows)),
      ),
      panel,
    ),
  );
  await run();
}
