// GET /v1/graph as the console draws it: nodes and edges with the figures the views show.
//
// One place that knows the API's field names, shared by the overview and the graph view.

import { api } from "../api.js";
import { fmtRfc3339, UNKNOWN } from "../dom.js";

function num(value, fallback = 0) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

function rateOver(requests, seconds, rounded) {
  return num(seconds) > 0 ? num(requests) / seconds : num(rounded);
}

function edgeOf(raw, seconds) {
  const us = (value) => (typeof value === "number" ? Math.round(value / 100) / 10 : undefined);
  return {
    raw,
    source: raw.source,
    dest: raw.dest,
    sourceService: raw.source_service,
    sourceNamespace: raw.source_namespace,
    destService: raw.dest_service,
    destNamespace: raw.dest_namespace,
    requests: num(raw.requests),
    // the API rounds its rates to 3 decimals; count / seconds is exact. `rate` is over the
    // edge's active span (analysis/graph.py: the whole minutes from its first call to its
    // last), so that two minutes of traffic in a 24h window read as what they were;
    // `windowRate` is the average over the whole window.
    rate: rateOver(raw.requests, raw.active_seconds, raw.active_rate_per_s),
    windowRate: rateOver(raw.requests, seconds, raw.rate_per_s),
    activeFromNs: raw.active_from_ns ?? null,
    activeToNs: raw.active_to_ns ?? null,
    activeSeconds: num(raw.active_seconds),
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

/** {nodes: [{name, title, inbound, external}], edges, seconds, fromNs, toNs} for the window `since`;
 * `fromNs` is where the graph's counting starts (whole minutes: before `since`; a multiple of
 * 60 s in nanoseconds, which a JSON number holds exactly). */
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
  return { nodes, edges, seconds, fromNs: raw.window?.from_ns ?? null, toNs: raw.window?.to_ns ?? null, raw };
}

const LABEL_MAX = 22; // characters a node's pill shows

/** Name → the text its pill shows: the name, shortened to `LABEL_MAX` characters with an
 * ellipsis (a SPIFFE ID keeps its end, `…/ns/shop/sa/web`, which tells workloads apart) unless
 * another node's text would then read the same; such nodes show their whole names, which the
 * server made unique (analysis/graph.py `node_names`). */
export function nodeLabels(names) {
  const short = (name) => {
    if (name.length <= LABEL_MAX) return name;
    return name.startsWith("spiffe://") ? `…${name.slice(-(LABEL_MAX - 1))}` : `${name.slice(0, LABEL_MAX - 1)}…`;
  };
  const uses = new Map();
  for (const name of new Set(names)) uses.set(short(name), (uses.get(short(name)) || 0) + 1);
  return new Map([...new Set(names)].map((name) => [name, uses.get(short(name)) > 1 ? name : short(name)]));
}

/** One end of an edge as the query filters name it (analysis/query.py `readings`): always
 * `service.namespace` when the namespace is known, even where the graph prints the bare service
 * (one namespace in view), so that a service of the same name elsewhere is left out. */
export function partyName(service, namespace) {
  const name = service || UNKNOWN;
  if (name.startsWith("spiffe://") || !namespace) return name; // a SPIFFE ID names its namespace
  return `${name}.${namespace}`;
}

/** The /v1/events filters that select the events an edge counts (as `auditmesh query` takes
 * them): its two ends, each call once as the graph counts it (`calls=once`: the callee's report,
 * the caller's when the callee sent none), from `fromNs`, the start of the graph's window. */
export function edgeQuery(edge, fromNs) {
  const query = {
    source: partyName(edge.sourceService, edge.sourceNamespace),
    dest: partyName(edge.destService, edge.destNamespace),
    calls: "once",
  };
  if (fromNs !== null && fromNs !== undefined) query.since = fmtRfc3339(fromNs);
  return query;
}
