// Event search: the filters of `auditmesh query`, paged with the API's cursor.
//
// The filters live in the address (#/events?service=payments&decision=deny), so a search can
// be bookmarked or linked from the graph; each page of results is one GET /v1/events, an
// audited read.

import { api } from "../api.js";
import {
  decisionBadge,
  eventLink,
  fmtDurationUs,
  fmtTime,
  h,
  peerName,
  provenanceBadge,
  shortId,
  statusBadge,
  traceLink,
} from "../dom.js";

// GET /v1/events parameters (analysis/query.py), as `auditmesh query` names its options.
export const FILTERS = [
  { name: "source", label: "Source (service or SPIFFE ID)", placeholder: "orders, orders.shop, unknown" },
  { name: "dest", label: "Destination", placeholder: "payments or payments.shop" },
  { name: "service", label: "Service (either side)", placeholder: "catalog" },
  { name: "path", label: "Path (prefix*)", placeholder: "/orders/export*" },
  { name: "status", label: "Status", placeholder: "403 or 5xx" },
  { name: "decision", label: "Decision", options: ["", "allow", "deny", "audit"] },
  { name: "trace", label: "Trace id", placeholder: "32 hex digits, or the first 8" },
  { name: "kind", label: "Kind", options: ["", "http", "tcp", "authn", "identity", "policy_change", "audit_read", "system"] },
  { name: "direction", label: "Side", options: ["", "inbound", "outbound"] },
  // as the service graph counts calls: the callee's report, the caller's when the callee sent none
  { name: "calls", label: "Each call", options: ["", "once"], texts: { "": "every report", once: "once, as the graph" } },
  { name: "since", label: "Since", placeholder: "15m, 24h or RFC 3339" },
  { name: "until", label: "Until", placeholder: "now" },
  { name: "order", label: "Order", options: ["", "newest", "oldest", "index"] },
  { name: "limit", label: "Per page", placeholder: "50" },
];
const PAGE = 50;

function party(peer) {
  if (!peer) return h("span", { class: "dim" }, "—");
  return h("span", { title: peer.identity || peer.ip || "" }, peerName(peer, shortId));
}

function row(item) {
  const event = item.event || item;
  const what = event.http ? `${event.http.method || ""} ${event.http.path || ""}` : event.kind;
  return h(
    "tr",
    { "data-id": event.id },
    h("td", { class: "nowrap small" }, fmtTime(event.time_ns)),
    h("td", { class: "call" }, party(event.source), h("span", { class: "dim" }, " → "), party(event.destination)),
    h("td", { class: "path mono", title: what }, what),
    h("td", {}, statusBadge(event.http?.status)),
    h("td", {}, decisionBadge(event.authz?.decision)),
    h("td", { class: "num small" }, fmtDurationUs(event.duration_us)),
    h("td", { class: "small dim" }, event.direction || event.kind, " ", provenanceBadge(event)),
    h("td", {}, event.trace ? traceLink(event.trace.trace_id, event.trace.trace_id.slice(0, 8) + "…") : ""),
    h("td", {}, eventLink(event.id, "open")),
  );
}

function form(params) {
  const fields = FILTERS.map((f) => {
    const control = f.options
      ? h("select", { id: `f-${f.name}`, name: f.name }, f.options.map((o) => h("option", { value: o, selected: params.get(f.name) === o }, f.texts?.[o] || o || (f.name === "order" ? "newest" : "any"))))
      : h("input", { id: `f-${f.name}`, name: f.name, placeholder: f.placeholder, value: params.get(f.name) || "" });
    return h("div", {}, h("label", { for: `f-${f.name}` }, f.label), control);
  });
  return h(
    "form",
    {
      class: "panel filters",
      id: "search-form",
      onsubmit: (event) => {
        event.preventDefault();
        const query = new URLSearchParams();
        for (const f of FILTERS) {
          const value = event.target.elements[f.name].value.trim();
          if (value) query.set(f.name, value);
        }
        location.hash = `#/events?${query}`;
      },
    },
    fields,
    h(
      "div",
      { class: "actions" },
      h("a", { href: "#/events", class: "button quiet" }, "Clear"),
      h("button", { type: "submit", id: "search-run" }, "Search"),
    ),
  );
}

export async function renderEvents(main, params) {
  const query = {};
  for (const f of FILTERS) if (params.get(f.name)) query[f.name] = params.get(f.name);
  query.limit = query.limit || PAGE;
  if (params.get("cursor")) query.cursor = params.get("cursor");
  main.append(h("h1", {}, "Events"), form(params));
  const page = await api("/v1/events", { query });
  const items = page.events || [];
  const next = page.next || null;
  const nextParams = new URLSearchParams(params);
  if (next) nextParams.set("cursor", next);
  const firstParams = new URLSearchParams(params);
  firstParams.delete("cursor");
  main.append(
    h(
      "div",
      { class: "panel" },
      h(
        "p",
        { class: "dim", id: "result-count" },
        items.length
          ? `${items.length} event${items.length === 1 ? "" : "s"}${params.get("cursor") ? " (a later page)" : ""}${next ? ", more on the next page" : ""}.`
          : "No events match.",
      ),
      items.length
        ? h(
            "table",
            { id: "results" },
            h("thead", {}, h("tr", {}, ["Time (UTC)", "Call", "Request", "Status", "Decision", "Duration", "Side", "Trace", ""].map((t) => h("th", {}, t)))),
            h("tbody", {}, items.map(row)),
          )
        : "",
      h(
        "div",
        { class: "pager" },
        params.get("cursor") ? h("a", { href: `#/events?${firstParams}`, class: "button quiet", id: "page-first" }, "← First page") : "",
        next ? h("a", { href: `#/events?${nextParams}`, class: "button", id: "page-next" }, "Next page →") : "",
      ),
    ),
  );
}
