// Trace view: the call tree of one request across services, with timings and decisions.
//
// GET /v1/traces/ID (an audited read; the tree is built by analysis/trace.py, as for
// `auditmesh trace`): each node is one hop, merged from the caller's and the callee's events.

import { api } from "../api.js";
import {
  badge,
  decisionBadge,
  eventLink,
  fmtDurationUs,
  fmtTime,
  h,
  statusBadge,
} from "../dom.js";

function* walk(nodes, depth = 0) {
  for (const node of nodes) {
    yield [depth, node];
    yield* walk(node.children || [], depth + 1);
  }
}

function sideLinks(call) {
  const links = [];
  if (call.outbound) links.push(eventLink(call.outbound.id, "caller's"));
  if (call.inbound) links.push(eventLink(call.inbound.id, "callee's"));
  return h("span", { class: "evidence" }, links);
}

function timeline(call, start, total) {
  const offset = total > 0 ? ((call.time_ns - start) / 1000 / total) * 100 : 0;
  const width = total > 0 ? (call.duration_us / total) * 100 : 100;
  const kind = call.decision === "deny" ? "bad" : call.outcome === "failure" ? "warn" : "";
  const bar = h("div", { class: `bar ${kind}`, title: `${fmtDurationUs(call.duration_us)} from +${fmtDurationUs(Math.round((call.time_ns - start) / 1000))}` });
  bar.style.left = `${Math.min(99.5, Math.max(0, offset)).toFixed(2)}%`;
  bar.style.width = `${Math.max(0.3, Math.min(100 - offset, width)).toFixed(2)}%`;
  return h("div", { class: "bar-track" }, bar);
}

function row(depth, call, start, total) {
  const indent = h("span", { class: "indent" });
  indent.style.width = `${depth * 18}px`;
  const request = call.method ? `${call.method} ${call.path || ""}` : call.kind;
  return h(
    "tr",
    { "data-depth": depth },
    h(
      "td",
      { class: "call" },
      indent,
      depth ? h("span", { class: "dim" }, "└ ") : "",
      h("span", { title: call.source_identity || "" }, call.source),
      h("span", { class: "dim" }, " → "),
      h("strong", { title: call.destination_identity || "" }, call.destination),
    ),
    h("td", { class: "path mono", title: request }, request),
    h("td", {}, statusBadge(call.status), call.error ? h("div", { class: "small dim" }, call.error.type) : ""),
    h(
      "td",
      {},
      decisionBadge(call.decision),
      call.policy ? h("div", { class: "small dim" }, call.policy) : "",
    ),
    h("td", {}, call.mtls ? badge("mTLS", "good") : badge("plaintext", "warn")),
    h("td", { class: "num" }, fmtDurationUs(call.duration_us)),
    h("td", { class: "bar-cell" }, timeline(call, start, total)),
    h("td", { class: "small" }, sideLinks(call)),
  );
}

export async function renderTrace(main, params, rest) {
  const id = rest[0];
  if (!id) throw new Error("no trace id in the address");
  const trace = await api(`/v1/traces/${encodeURIComponent(id)}`);
  const start = trace.time_ns;
  const total = Math.max(1, trace.duration_us);
  const rows = [...walk(trace.roots || [])].map(([depth, call]) => row(depth, call, start, total));
  main.append(
    h("h1", {}, "Trace ", h("span", { class: "mono" }, trace.trace_id)),
    h(
      "p",
      { class: "summary", id: "trace-summary" },
      `${trace.calls} call${trace.calls === 1 ? "" : "s"} from ${trace.events} audit events, `,
      `${fmtDurationUs(trace.duration_us)} from ${fmtTime(String(BigInt(Math.round(start))))}`,
      trace.failures ? h("span", {}, "  ", badge(`${trace.failures} failed`, "bad")) : "",
      trace.denials ? h("span", {}, "  ", badge(`${trace.denials} denied`, "bad")) : "",
      "  ",
      h("a", { href: `#/events?trace=${encodeURIComponent(trace.trace_id)}` }, "its events →"),
    ),
    h(
      "div",
      { class: "panel" },
      rows.length
        ? h(
            "table",
            { class: "waterfall", id: "trace-tree" },
            h("thead", {}, h("tr", {}, ["Call", "Request", "Status", "Decision", "TLS", "Duration", "Timeline", "Events"].map((t) => h("th", { class: t === "Duration" ? "num" : "" }, t)))),
            h("tbody", {}, rows),
          )
        : h("p", { class: "dim" }, "No calls recorded for this trace."),
    ),
  );
}
