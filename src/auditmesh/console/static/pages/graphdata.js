// GET /v1/graph as the console draws it: nodes and edges with the figures the views show.
//
// One place that knows the API's field names, shared by the overview and the graph view.

import { api } from "../api.js";

const UNKNOWN = "unknown"; // analysis/graph.py: a caller that proved no identity, named no service

function num(value, fallback = 0) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

function edgeOf(raw, seconds) {
  const us = (value) => (typeof value === "number" ? Math.round(value / 100) / 10 : undefined);
  return {
    raw,
    source: raw.source,
    dest: raw.dest,
    sourceService: raw.source_service,
    destService: raw.dest_service,
    requests: num(raw.requests),
    // the API rounds rate_per_s to 3 decimals; over long windows count / seconds is exact
    rate: seconds > 0 ? num(raw.requests) / seconds : num(raw.rate_per_s),
    errors: num(raw.errors),
    errorRate: num(raw.error_rate),
    denials: num(raw.denials),
    mtlsShare: num(raw.mtls_share, 1),
    plaintext: num(raw.plaintext) > 0,
    bytes: num(raw.bytes),
    p50: us(raw.p50_us),
    p95: us(raw.p95_us),
    p99: us(raw.p99_us),
  };
}

/** {nodes: [{name, title, inbound, external}], edges, seconds} for the window `since`. */
export async function loadGraph(since) {
  const raw = await api("/v1/graph", { query: { since } });
  const seconds = num(raw.window?.seconds);
  const edges = (raw.edges || []).map((e) => edgeOf(e, seconds));
  const nodes = (raw.nodes || []).map((n) => ({
    name: n.name,
    title: n.namespace ? `${n.service} (namespace ${n.namespace})` : n.service,
    inbound: num(n.inbound),
    external: n.service === UNKNOWN,
  }));
  return { nodes, edges, seconds, raw };
}

/** The /v1/events filters that select an edge's calls (as `auditmesh query` takes them). */
export function edgeQuery(edge, since) {
  const query = { since, direction: "inbound" }; // the graph counts each call once, as its callee saw it
  if (edge.sourceService && edge.sourceService !== UNKNOWN) query.source = edge.sourceService;
  if (edge.destService && edge.destService !== UNKNOWN) query.dest = edge.destService;
  return query;
}
