// The service graph: services and the calls between them, as an SVG picture and a table.
//
// Edges come from GET /v1/graph?since= (the same figures as `auditmesh graph`); positions from
// POST /console/api/layout (networkx, on the server). Colour: error rate; width: volume;
// dashed: some calls were plaintext (no mTLS); a purple casing and a "N denied" pill: calls the
// policy denied, which are not errors (a fully denied edge has 0% errors) but are what an audit
// looks for, so they never hide behind a green line. Clicking an edge lists
// its events through GET /v1/events (an audited read). An edge's rate is over the minutes it had
// traffic, not the whole window (graphdata.js); the page says so where rates are shown.

import { api } from "../api.js";
import {
  badge,
  clear,
  decisionBadge,
  errorPanel,
  eventLink,
  fmtAge,
  fmtBytes,
  fmtPercent,
  fmtRate,
  fmtRateIn,
  fmtTime,
  h,
  rateUnit,
  s,
  shortEventId,
  statusBadge,
} from "../dom.js";
import { edgeQuery, loadGraph, nodeLabels } from "./graphdata.js";

const WIDTH = 1200;
const WINDOWS = [
  { since: "15m", label: "15m", seconds: 900 },
  { since: "1h", label: "1h", seconds: 3600 },
  { since: "24h", label: "24h", seconds: 86400 },
  { since: "7d", label: "7d", seconds: 604800 },
  { since: "365d", label: "1 year", seconds: 31536000 },
];
const NODE_H = 36; // nodes are pills sized to their names
const BINS = [
  { max: 0.01, colour: "#2f9e6b", label: "< 1% errors", key: "ok" },
  { max: 0.05, colour: "#b59a12", label: "1–5%", key: "low" },
  { max: 0.2, colour: "#e07b00", label: "5–20%", key: "mid" },
  { max: Infinity, colour: "#c62828", label: "≥ 20%", key: "high" },
];

const DENIED = "#6b2fa3"; // console.css --denied: no error bin's colour

function bin(errorRate) {
  return BINS.find((b) => errorRate < b.max) || BINS[BINS.length - 1];
}

function markers() {
  return s(
    "defs",
    {},
    BINS.map((b) =>
      s(
        "marker",
        { id: `arrow-${b.key}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse", markerUnits: "userSpaceOnUse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: b.colour }),
      ),
    ),
  );
}

/** A curved path from a to b, bent sideways so reciprocal edges and long edges separate. */
function curve(a, b, bend) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const length = Math.hypot(dx, dy) || 1;
  const nx = -dy / length;
  const ny = dx / length;
  const mx = (a.x + b.x) / 2 + nx * bend;
  const my = (a.y + b.y) / 2 + ny * bend;
  // start and end on the pills' outlines (their boxes), pointing at the control point
  const trim = (p, q, gap) => {
    const ux = q.x - p.x;
    const uy = q.y - p.y;
    const t = Math.min(ux ? (p.hw + gap) / Math.abs(ux) : Infinity, uy ? (NODE_H / 2 + gap) / Math.abs(uy) : Infinity);
    return { x: p.x + ux * Math.min(t, 0.45), y: p.y + uy * Math.min(t, 0.45) };
  };
  const start = trim(a, { x: mx, y: my }, 2);
  const end = trim(b, { x: mx, y: my }, 5);
  // where the label and the denial mark go: the middle of the curve, or nearer the callee
  // on long edges, which cross the middle of the picture where short edges already are
  const t = Math.abs(dx) > 500 ? 0.7 : 0.5;
  const point = (a1, c, b1) => (1 - t) * (1 - t) * a1 + 2 * (1 - t) * t * c + t * t * b1;
  const mid = { x: point(start.x, mx, end.x), y: point(start.y, my, end.y) };
  return { d: `M ${start.x.toFixed(1)} ${start.y.toFixed(1)} Q ${mx.toFixed(1)} ${my.toFixed(1)} ${end.x.toFixed(1)} ${end.y.toFixed(1)}`, mid };
}

function label(node) {
  return node.label || node.name;
}

function pill(node) {
  return Math.max(84, label(node).length * 8.2 + 28);
}

/** A time to the minute in UTC (to the second when it is not a whole minute: "now"). */
function fmtClock(ns) {
  return fmtTime(ns).slice(11, 19).replace(/:00$/, "");
}

/** "2026-11-29 12:47–12:49 UTC": the span an edge had traffic. */
function fmtSpan(fromNs, toNs) {
  const from = fmtTime(fromNs);
  const to = fmtTime(toNs);
  const sameDay = from.slice(0, 10) === to.slice(0, 10);
  return `${from.slice(0, 10)} ${fmtClock(fromNs)}–${sameDay ? "" : `${to.slice(0, 10)} `}${fmtClock(toNs)} UTC`;
}

/** What an edge's rate is: over its active span (in `unit`, the table's, else its own), and
 * the window's average beside it. */
function rateNote(e, unit) {
  const rate = unit ? fmtRateIn(e.rate, unit) : fmtRate(e.rate);
  if (!e.activeSeconds) return `${rate} averaged over the window`;
  return (
    `${rate} while it had calls, ${fmtSpan(e.activeFromNs, e.activeToNs)} ` +
    `(${fmtAge(e.activeSeconds)}); ${fmtRate(e.windowRate)} averaged over the whole window`
  );
}

/** "34 of 34 calls denied (100%)", "0 denied". */
function deniedText(e) {
  return e.denials ? `${e.denials} of ${e.requests} ${e.requests === 1 ? "call" : "calls"} denied (${fmtPercent(e.denials / e.requests)})` : "0 denied";
}

function edgeTitle(e) {
  return (
    `${e.source} → ${e.dest}: ${e.requests} ${e.requests === 1 ? "call" : "calls"}, ${rateNote(e)}; ` +
    `${fmtPercent(e.errorRate)} errors, ${deniedText(e)}, mTLS ${fmtPercent(e.mtlsShare)}` +
    (e.p95 !== undefined ? `, p95 ${e.p95} ms` : "")
  );
}

function picture(graph, positions, onSelect) {
  const columns = new Set(Object.values(positions).map((p) => p[0]));
  const perColumn = {};
  for (const p of Object.values(positions)) perColumn[p[0]] = (perColumn[p[0]] || 0) + 1;
  const tallest = Math.max(1, ...Object.values(perColumn));
  const height = Math.max(380, 130 * tallest + 60);
  const padX = 110;
  const padY = 70;
  const widths = Object.fromEntries(graph.nodes.map((n) => [n.name, pill(n)]));
  const at = (name) => {
    const [x, y] = positions[name] || [0.5, 0.5];
    return { x: padX + x * (WIDTH - 2 * padX), y: padY + y * (height - 2 * padY), hw: (widths[name] || 84) / 2 };
  };
  const maxRequests = Math.max(1, ...graph.edges.map((e) => e.requests));
  const svg = s("svg", { class: "graph", id: "graph-svg", viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-label": "service graph" });
  svg.append(markers());
  const edgeLayer = s("g", { class: "edges" });
  const badgeLayer = s("g", { class: "denials" });
  const pairs = new Set(graph.edges.map((e) => `${e.source}\u0000${e.dest}`));
  graph.edges.forEach((e, i) => {
    const a = at(e.source);
    const b = at(e.dest);
    const reciprocal = pairs.has(`${e.dest}\u0000${e.source}`);
    const span = Math.abs(b.x - a.x) / (WIDTH - 2 * padX);
    const bend = (reciprocal ? 26 : 0) + (span > 0.45 ? 38 : 14) * (a.y <= b.y ? 1 : -1);
    const { d, mid } = curve(a, b, bend);
    const colour = bin(e.errorRate);
    const width = 1.5 + (7 * Math.log1p(e.requests)) / Math.log1p(maxRequests);
    const group = s(
      "g",
      {
        class: `edge${e.plaintext ? " plaintext" : ""}${e.denials ? " denied" : ""}`,
        "data-source": e.source,
        "data-dest": e.dest,
        "data-denials": e.denials,
        "data-error-bin": colour.key,
        tabindex: 0,
        role: "button",
        onclick: () => onSelect(i),
        onkeydown: (event) => {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault(); // a space scrolls the page otherwise
            onSelect(i);
          }
        },
      },
      s("title", {}, edgeTitle(e)),
      e.denials ? s("path", { class: "casing", d, stroke: DENIED, "stroke-width": (width + 10).toFixed(1) }) : null,
      e.denials ? s("path", { class: "casing-gap", d, "stroke-width": (width + 4).toFixed(1) }) : null,
      s("path", {
        class: "line",
        d,
        stroke: colour.colour,
        "stroke-width": width.toFixed(1),
        "stroke-opacity": 0.85,
        "stroke-dasharray": e.plaintext ? "9 6" : null,
        "marker-end": `url(#arrow-${colour.key})`,
      }),
      s("path", { class: "hit", d }),
      s("text", { class: "edge-label", x: mid.x.toFixed(1), y: (mid.y - 6 - width / 2).toFixed(1), "text-anchor": "middle" }, String(e.requests)),
    );
    edgeLayer.append(group);
    if (e.denials > 0) {
      badgeLayer.append(
        s(
          "g",
          { class: "denial", "data-source": e.source, "data-dest": e.dest, transform: `translate(${mid.x.toFixed(1)} ${(mid.y + 14).toFixed(1)})`, onclick: () => onSelect(i) },
          s("title", {}, `${e.source} → ${e.dest}: ${deniedText(e)} by policy`),
          deniedPill(`${e.denials} denied`),
        ),
      );
    }
  });
  const nodeLayer = s("g", { class: "nodes" });
  for (const node of graph.nodes) {
    const p = at(node.name);
    nodeLayer.append(
      s(
        "g",
        { class: "node", "data-name": node.name, transform: `translate(${p.x.toFixed(1)} ${p.y.toFixed(1)})` },
        s("title", {}, node.title || node.name),
        s("rect", { x: -pill(node) / 2, y: -NODE_H / 2, width: pill(node), height: NODE_H, rx: NODE_H / 2, class: node.external ? "external" : "" }),
        s("text", { "text-anchor": "middle", dy: "4.5" }, label(node)),
        s("text", { class: "sub", "text-anchor": "middle", dy: NODE_H / 2 + 15 }, node.inbound ? `${node.inbound} calls in` : "caller only"),
      ),
    );
  }
  svg.append(edgeLayer, nodeLayer, badgeLayer);
  svg.dataset.columns = String(columns.size);
  return svg;
}

/** The purple "34 denied" pill of the picture (and the legend), centred on (0, 0). */
function deniedPill(text) {
  const width = text.length * 6.6 + 14;
  return [
    s("rect", { x: (-width / 2).toFixed(1), y: -10, width: width.toFixed(1), height: 20, rx: 10, fill: DENIED }),
    s("text", { "text-anchor": "middle", dy: "4" }, text),
  ];
}

function legend() {
  const line = (attrs) => s("svg", { width: 36, height: 10 }, s("line", { x1: 2, y1: 5, x2: 34, y2: 5, ...attrs }));
  return h(
    "div",
    { class: "legend" },
    BINS.map((b) => h("span", {}, line({ stroke: b.colour, "stroke-width": 4 }), ` ${b.label}`)),
    h("span", {}, line({ stroke: "#5d6b78", "stroke-width": 2 }), "/", line({ stroke: "#5d6b78", "stroke-width": 8 }), " volume"),
    h("span", {}, line({ stroke: "#5d6b78", "stroke-width": 3, "stroke-dasharray": "9 6" }), " plaintext calls"),
    h(
      "span",
      { id: "legend-denied" },
      s("svg", { width: 36, height: 14 }, s("line", { x1: 2, y1: 7, x2: 34, y2: 7, stroke: DENIED, "stroke-width": 12 }), s("line", { x1: 2, y1: 7, x2: 34, y2: 7, stroke: "#fbfcfd", "stroke-width": 8 }), s("line", { x1: 2, y1: 7, x2: 34, y2: 7, stroke: "#5d6b78", "stroke-width": 4 })),
      s("svg", { width: 64, height: 22, class: "graph-pill" }, s("g", { class: "denial", transform: "translate(32 11)" }, deniedPill("n denied"))),
      " calls denied by policy (not counted as errors)",
    ),
  );
}

const RATE_HELP =
  "Calls per second while the edge had traffic: from the start of the minute of its first call " +
  "in the window to the end of the minute of its last (a minute still running counts whole), not the " +
  "average over the whole window.";

function edgeTable(graph, unit, onSelect) {
  const head = ["Caller", "Callee", "Calls", "Rate while active", "Errors", "Denied", "mTLS", "p50", "p95", "p99", "Bytes"];
  return h(
    "table",
    { id: "edge-table" },
    h("thead", {}, h("tr", {}, head.map((t, i) => h("th", { class: i > 1 ? "num" : "", title: i === 3 ? RATE_HELP : null }, t)))),
    h(
      "tbody",
      {},
      graph.edges.map((e, i) =>
        h(
          "tr",
          {
            class: `clickable${e.denials ? " has-denials" : ""}`,
            "data-edge": i,
            "data-denials": e.denials,
            tabindex: 0,
            onclick: () => onSelect(i),
            onkeydown: (event) => {
              if (event.key === "Enter" || event.key === " ") {
                event.preventDefault(); // a space scrolls the page otherwise
                onSelect(i);
              }
            },
          },
          h("td", {}, e.source),
          h("td", {}, e.dest),
          h("td", { class: "num" }, String(e.requests)),
          h("td", { class: "num rate", title: rateNote(e, unit) }, fmtRateIn(e.rate, unit)),
          h("td", { class: "num" }, e.errorRate >= 0.05 ? badge(fmtPercent(e.errorRate), e.errorRate >= 0.2 ? "bad" : "warn") : fmtPercent(e.errorRate)),
          h("td", { class: "num denied-count", title: deniedText(e) }, e.denials ? badge(`${e.denials} denied`, "denied") : "0"),
          h("td", { class: "num" }, e.mtlsShare < 1 ? badge(fmtPercent(e.mtlsShare), "warn") : fmtPercent(e.mtlsShare)),
          ["p50", "p95", "p99"].map((k) => h("td", { class: "num" }, e[k] === undefined ? "—" : `${e[k]} ms`)),
          h("td", { class: "num" }, fmtBytes(e.bytes)),
        ),
      ),
    ),
  );
}

/** The edge panel's line on its denials, with a search for just those; none: nothing. */
function denialNote(edge, query) {
  if (!edge.denials) return null;
  const search = new URLSearchParams({ ...query, decision: "deny" });
  return h(
    "p",
    { class: "denied-note", id: "edge-denials" },
    badge(`${edge.denials} denied`, "denied"),
    ` ${deniedText(edge)} by policy; denials are not counted as errors. `,
    h("a", { href: `#/events?${search}` }, "List the denied calls →"),
  );
}

async function showEdge(panel, graph, edge) {
  const query = edgeQuery(edge, graph.fromNs);
  const search = new URLSearchParams(query);
  clear(panel).append(
    h("h2", {}, `${edge.source} → ${edge.dest}`),
    denialNote(edge, query) || "", // Element.append would write null as "null"
    h("p", { class: "dim" }, edgeTitle(edge), "  ", h("a", { href: `#/events?${search}`, id: "edge-search" }, "Open in event search →")),
    h("p", { class: "dim" }, "Loading events…"),
  );
  const shown = (panel.dataset.shown = String(Number(panel.dataset.shown || 0) + 1));
  const page = await api("/v1/events", { query: { ...query, limit: 50 } });
  if (panel.dataset.shown !== shown) return; // another edge was chosen meanwhile: this list is stale
  const events = page.events || [];
  panel.lastChild.replaceWith(
    events.length
      ? h(
          "table",
          { id: "edge-events" },
          h("thead", {}, h("tr", {}, ["Time", "Event", "Request", "Status", "Decision", "Side"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            events.map(({ event }) =>
              h(
                "tr",
                {},
                h("td", { class: "nowrap small" }, fmtTime(event.time_ns)),
                h("td", {}, eventLink(event.id, shortEventId(event.id))),
                h("td", { class: "path mono" }, event.http ? `${event.http.method} ${event.http.path}` : event.kind),
                h("td", {}, statusBadge(event.http?.status)),
                h("td", {}, decisionBadge(event.authz?.decision)),
                h("td", { class: "small dim" }, event.direction || ""),
              ),
            ),
          ),
        )
      : h("p", { class: "dim" }, "No events for this edge in the window."),
  );
  if (page.next) {
    panel.append(
      h("p", { class: "dim small", id: "edge-more" }, `The latest ${events.length} of its ${edge.requests} calls; `, h("a", { href: `#/events?${search}` }, "event search lists them all"), "."),
    );
  }
}

/** "the last 24h (from 2026-11-28 12:49 UTC)": the window the figures count. */
function windowName(since, graph) {
  const from = graph.fromNs === null ? "" : ` (from ${fmtTime(graph.fromNs).slice(0, 16)} UTC)`;
  return /^[0-9]+[a-z]+$/.test(since) ? `the last ${since}${from}` : `the window since ${since}${from}`;
}

function windowLink(w, current) {
  return h("a", { href: `#/graph?since=${w.since}`, class: `button ${w.since === current ? "" : "quiet"}` }, w.label);
}

/** No calls in the window: say so, and how to see more, instead of an empty picture. */
function emptyState(since, graph) {
  const current = WINDOWS.find((w) => w.since === since);
  const wider = WINDOWS.filter((w) => !current || w.seconds > current.seconds);
  return h(
    "div",
    { class: "panel info empty", id: "graph-empty", role: "status" },
    h("h2", {}, "Nothing matched"),
    h("p", {}, `No calls were recorded in ${windowName(since, graph)}, so there is no graph and no edge to list.`),
    wider.length
      ? h("p", { class: "row" }, "Widen the window:", wider.map((w) => windowLink(w, since)))
      : h("p", {}, "Not in the longest window either."),
    h(
      "p",
      { class: "dim small" },
      "If no window shows calls, none have reached this server's ledger yet: check that the sidecars (or ",
      h("code", {}, "auditmesh ingest"),
      ") send their events here; ",
      h("a", { href: "#/events" }, "Events"),
      " lists what the ledger holds.",
    ),
  );
}

function rateHelp(since, graph, unit) {
  return h(
    "p",
    { class: "dim small", id: "rate-help" },
    `Calls and figures over ${windowName(since, graph)}. "Rate while active": ${RATE_HELP} ` +
      `All rates are in calls per ${unit.name}, so rows compare. Hover a rate for both.`,
  );
}

/** The server refused the window (since=garbage, a time in the future): say why, in place,
 * under the page's own header and its window buttons. */
function badWindow(since, message) {
  return h(
    "div",
    { class: "panel bad", id: "graph-bad-window", role: "alert" },
    h("h2", {}, "This window cannot be shown"),
    h("p", {}, `The address asks for since=${since}, which the server refused: ${message}`),
    h("p", { class: "row" }, "Pick a window:", WINDOWS.map((w) => windowLink(w, since))),
  );
}

export async function renderGraph(main, params) {
  const since = params.get("since") || "24h";
  const header = h(
    "div",
    { class: "row" },
    h("h1", {}, "Service graph"),
    h("span", { class: "spacer" }),
    h("span", { class: "dim" }, "Window:"),
    WINDOWS.map((w) => windowLink(w, since)),
  );
  main.append(header); // the frame stays whatever the server answers
  let graph;
  try {
    graph = await loadGraph(since);
  } catch (error) {
    if (error.status !== 400) throw error;
    main.append(badWindow(since, error.message));
    return;
  }
  if (!graph.edges.length) {
    main.append(emptyState(since, graph));
    return;
  }
  const labels = nodeLabels(graph.nodes.map((n) => n.name));
  for (const node of graph.nodes) node.label = labels.get(node.name);
  const { positions } = await api("/console/api/layout", {
    method: "POST",
    body: { nodes: graph.nodes.map((n) => n.name), edges: graph.edges.map((e) => [e.source, e.dest]) },
  });
  const detail = h("div", { class: "panel", id: "edge-detail" }, h("p", { class: "dim" }, "Click an edge (or a row below) to list its events."));
  const select = (i) => {
    for (const [j, el] of document.querySelectorAll("#graph-svg .edge").entries()) el.classList.toggle("selected", j === i);
    for (const row of document.querySelectorAll("#edge-table tbody tr")) row.classList.toggle("selected", row.dataset.edge === String(i));
    showEdge(detail, graph, graph.edges[i]).catch((error) => detail.lastChild.replaceWith(errorPanel(error.message)));
    detail.scrollIntoView({ block: "nearest" });
  };
  const unit = rateUnit(graph.edges.map((e) => e.rate)); // one unit for the whole table
  main.append(
    h("div", { class: "panel graph-wrap" }, picture(graph, positions, select), legend()),
    detail,
    h("div", { class: "panel" }, h("h2", {}, "Edges"), rateHelp(since, graph, unit), edgeTable(graph, unit, select)),
  );
}
