// Findings: who misbehaves, when, by how much against the baseline, and the evidence.
//
// GET /v1/findings (analysis/findings.py; an audited read). Each finding lists its events
// (each opens the event page, which verifies its proof), links to the same events in the
// search, and downloads them as an evidence bundle (POST /console/api/bundle, the format
// `auditmesh bundle verify` checks offline).

import { download } from "../api.js";
import { badge, errorPanel, eventLink, fmtDurationUs, fmtRfc3339, fmtTime, h, shortEventId } from "../dom.js";
import { kindOf, loadFindings, severityOf } from "./findingsdata.js";

const WINDOWS = ["1h", "24h", "7d", "365d"];

function number(value, unit) {
  if (unit === "failure rate" || unit.endsWith("share")) return `${(value * 100).toFixed(1)}%`;
  if (unit === "µs" || unit === "us" || unit.startsWith("p95")) return fmtDurationUs(Math.round(value));
  if (unit.includes("bytes")) return `${Math.round(value).toLocaleString("en")} B`;
  return Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(1);
}

/** The /v1/events filters that select the events behind a finding: its window, and the filters
 * the server found all of its events to share (analysis/findings.py `_search`: caller, callee,
 * kind, direction, decision, status class). Not guessed from the finding's kind here: an error
 * burst of TCP calls has no 5xx, a slow service's finding may name a flooder as responsible, and
 * one service may answer under several identities. */
export function searchFor(finding) {
  const query = new URLSearchParams();
  // times as the search form shows and takes them, to the nanosecond: the same events
  query.set("since", fmtRfc3339(finding.window.start_ns));
  query.set("until", fmtRfc3339(BigInt(finding.window.end_ns) + 1n));
  for (const [name, value] of Object.entries(finding.search || {})) query.set(name, value);
  return query;
}

async function saveBundle(finding, button) {
  button.disabled = true;
  try {
    const indices = finding.evidence_indices;
    const blob = await download("/console/api/bundle", { indices });
    const link = h("a", { href: URL.createObjectURL(blob), download: `evidence-${finding.kind}-${indices[0]}.zip` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    button.nextElementSibling?.matches(".badge") && button.nextElementSibling.remove();
    button.after(h("span", { class: "badge good" }, `${indices.length} events with proofs saved`));
  } catch (error) {
    button.nextElementSibling?.matches(".badge") && button.nextElementSibling.remove();
    button.after(h("span", { class: "badge bad" }, error.message));
  } finally {
    button.disabled = false;
  }
}

function card(finding, position) {
  const severity = severityOf(finding);
  const start = finding.window.start_ns;
  const spanUs = Number((BigInt(finding.window.end_ns) - BigInt(start)) / 1000n);
  const more = finding.count - finding.event_ids.length;
  const button = h("button", { type: "button", class: "quiet", "data-action": "bundle" }, "Download evidence bundle");
  button.addEventListener("click", () => saveBundle(finding, button));
  return h(
    "article",
    {
      class: `panel finding ${severity}`,
      "data-kind": finding.kind,
      "data-start-ns": finding.window.start_ns,
      "data-end-ns": finding.window.end_ns,
      id: `finding-${position}`,
    },
    h(
      "div",
      { class: "row" },
      badge(severity, severity === "high" ? "bad" : "warn"),
      h("h2", { class: "inline" }, kindOf(finding)),
      h("span", { class: "dim" }, "responsible: "),
      h("strong", { class: "responsible" }, finding.responsible),
      h("span", { class: "dim" }, " → "),
      h("strong", {}, finding.destination),
    ),
    h("p", { class: "summary-text" }, finding.summary),
    h(
      "div",
      { class: "numbers" },
      h("div", {}, h("strong", {}, number(finding.observed, finding.unit)), `observed (${finding.unit})`),
      h("div", {}, h("strong", {}, number(finding.expected, finding.unit)), "baseline"),
      h("div", {}, h("strong", {}, String(finding.count)), "events"),
      h("div", {}, h("strong", {}, fmtTime(start)), `window, ${fmtDurationUs(spanUs)}`),
    ),
    h(
      "div",
      { class: "evidence-block" },
      h("span", { class: "dim small" }, "Evidence: "),
      h("span", { class: "evidence" }, finding.event_ids.map((id) => eventLink(id, shortEventId(id))), more > 0 ? h("span", { class: "dim" }, `and ${more} more`) : ""),
    ),
    h(
      "div",
      { class: "row actions" },
      h("a", { href: `#/events?${searchFor(finding)}`, class: "button quiet" }, "Search these events →"),
      button,
    ),
  );
}

export async function renderFindings(main, params) {
  const since = WINDOWS.includes(params.get("since")) ? params.get("since") : "24h";
  const { items, events } = await loadFindings(since);
  const high = items.filter((f) => severityOf(f) === "high").length;
  main.append(
    h(
      "div",
      { class: "row" },
      h("h1", {}, "Findings"),
      h("span", { class: "spacer" }),
      h("span", { class: "dim" }, "Window:"),
      WINDOWS.map((w) => h("a", { href: `#/findings?since=${w}`, class: `button ${w === since ? "" : "quiet"}` }, w === "365d" ? "1 year" : w)),
    ),
    h(
      "p",
      { class: "dim", id: "findings-summary" },
      `${items.length} finding${items.length === 1 ? "" : "s"} (${high} high) from ${events} events of the last ${since === "365d" ? "year" : since}; each is measured against the first quarter of the window, the baseline.`,
    ),
    items.length ? h("div", { id: "findings-list" }, items.map(card)) : h("div", { class: "panel info" }, "Nothing stands out in this window."),
  );
  void errorPanel;
}
