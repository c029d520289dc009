// Overview: how much traffic, how much of it denied, what needs looking at, how the ledger is.
//
// Reads GET /console/api/overview (ledger size, latest checkpoint and its age, the log's key),
// GET /v1/graph (calls and denials in the window) and GET /v1/findings (open findings).

import { api } from "../api.js";
import { badge, clear, fmtAge, fmtPercent, fmtRate, fmtTime, h } from "../dom.js";
import { findingTitle, loadFindings, severityOf } from "./findingsdata.js";
import { edgeQuery, loadGraph } from "./graphdata.js";
import { pinKey, pinnedKey, pinnedKeyProblem } from "./keys.js";

const WINDOWS = { "15m": 900, "1h": 3600, "24h": 86400 };

function tile(id, label, value, sub, kind) {
  return h(
    "div",
    { class: `tile ${kind || ""}`, id },
    h("div", { class: "label" }, label),
    h("div", { class: "value" }, value),
    h("div", { class: "sub" }, sub),
  );
}

function keyPanel(served) {
  const input = h("input", { id: "pin-key", size: 70, value: pinnedKey(), placeholder: "paste a verifier key: name+keyid+key" });
  const status = h("span", { class: "dim small", id: "pin-status" });
  const say = (text, problem) => {
    status.textContent = text;
    status.className = problem ? "small bad-text" : "dim small";
    if (problem) status.setAttribute("role", "alert");
    else status.removeAttribute("role");
  };
  const show = async () => {
    const pinned = pinnedKey();
    const problem = await pinnedKeyProblem();
    if (problem) say(`The pinned key is not a verifier key: ${problem}. Pin the right one, or unpin.`, true);
    else if (!pinned) say("Not pinned: proofs are checked against the key this server serves.");
    else if (pinned === served) say("Pinned; the server serves the same key.");
    else say("Pinned, and it differs from the key this server serves: proofs will fail unless the checkpoints are signed by the pinned key.");
  };
  const pin = async () => {
    try {
      await pinKey(input.value);
    } catch (error) {
      const kept = pinnedKey() ? "the key pinned before stays pinned" : "nothing is pinned";
      say(`Refused: ${error.message}; ${kept}.`, true);
      return;
    }
    await show();
  };
  show();
  return h(
    "div",
    { class: "panel" },
    h("h2", {}, "Log verifier key"),
    h("p", { class: "small" }, "This server signs its checkpoints with ", h("code", { id: "served-key" }, served), "."),
    h("p", { class: "dim small" }, "Pin the key you got from elsewhere (your auditor, your deployment) and this browser checks every proof against it."),
    h("label", { for: "pin-key" }, "Key to pin"),
    h(
      "div",
      { class: "row" },
      input,
      h("button", { type: "button", id: "pin-button", onclick: pin }, "Pin"),
      h("button", { type: "button", class: "quiet", id: "unpin-button", onclick: () => pinKey("").then(() => { input.value = ""; return show(); }) }, "Unpin"),
    ),
    status,
  );
}

/** The span any edge had calls in (the graph page's "while active", over all edges): from
 * the start of the first minute with a call to the end of the last; null without calls. */
function activeSpan(graph) {
  const active = graph.edges.filter((e) => e.activeSeconds > 0);
  if (!active.length) return null;
  const from = Math.min(...active.map((e) => e.activeFromNs));
  const to = Math.max(...active.map((e) => e.activeToNs));
  return { from, to, seconds: (to - from) / 1e9 };
}

/** The calls tile's rates, each named: the average over the whole window, and the rate while
 * there were calls, as the graph page gives an edge's (its "Rate while active"). */
function callRates(requests, graph, window) {
  const average = `${fmtRate(requests / (graph.seconds || WINDOWS[window]))} averaged over the whole last ${window}`;
  const span = activeSpan(graph);
  if (!span || !requests) return average;
  const from = fmtTime(span.from).slice(11, 16);
  return [
    average,
    h("br"),
    h(
      "span",
      { id: "calls-active-rate", title: `All calls over the minutes from the first call in the window (${from} UTC) to the end of the last; the service graph gives each edge's rate the same way.` },
      `${fmtRate(requests / span.seconds)} while there were calls (${fmtAge(span.seconds)} from ${from} UTC)`,
    ),
  ];
}

function troubleTable(graph) {
  const troubled = graph.edges
    .filter((e) => e.errorRate >= 0.01 || e.denials > 0 || e.plaintext)
    .sort((a, b) => b.denials - a.denials || b.errorRate - a.errorRate)
    .slice(0, 8);
  if (!troubled.length) return h("p", { class: "dim" }, "No edge with errors, denials or plaintext calls.");
  return h(
    "table",
    { id: "trouble-edges" },
    h("thead", {}, h("tr", {}, ["Edge", "Calls", "Errors", "Denied", "mTLS"].map((t, i) => h("th", { class: i ? "num" : "" }, t)))),
    h(
      "tbody",
      {},
      troubled.map((e) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/events?${new URLSearchParams(edgeQuery(e, graph.fromNs))}` }, `${e.source} → ${e.dest}`)),
          h("td", { class: "num" }, String(e.requests)),
          h("td", { class: "num" }, e.errorRate >= 0.05 ? badge(fmtPercent(e.errorRate), "bad") : fmtPercent(e.errorRate)),
          h("td", { class: "num" }, e.denials ? badge(`${e.denials} denied`, "denied") : "0"),
          h("td", { class: "num" }, e.plaintext ? badge(fmtPercent(e.mtlsShare), "warn") : "100%"),
        ),
      ),
    ),
  );
}

/** "3.8% of calls, on 1 edge": a count over the window is its rate already; how widely the
 * denials spread says more. */
function deniedShare(graph, requests, denials) {
  const edges = graph.edges.filter((e) => e.denials > 0).length;
  return `${fmtPercent(requests ? denials / requests : 0)} of calls${edges ? `, on ${edges} ${edges === 1 ? "edge" : "edges"}` : ""}`;
}

export async function renderOverview(main, params) {
  const window = WINDOWS[params.get("since")] ? params.get("since") : "1h";
  // findings are the slowest and least essential figure: the rest shows even if they fail
  const [ledger, graph, findings] = await Promise.all([
    api("/console/api/overview"),
    loadGraph(window),
    loadFindings("24h").catch((error) => ({ items: [], error })),
  ]);
  const requests = graph.edges.reduce((n, e) => n + e.requests, 0);
  const denials = graph.edges.reduce((n, e) => n + e.denials, 0);
  const open = findings.items;
  const cp = ledger.checkpoint;
  const age = cp ? cp.age_s : null;
  main.append(
    h(
      "div",
      { class: "row" },
      h("h1", {}, "Overview"),
      h("span", { class: "spacer" }),
      h("span", { class: "dim" }, "Window:"),
      Object.keys(WINDOWS).map((w) => h("a", { href: `#/overview?since=${w}`, class: `button ${w === window ? "" : "quiet"}` }, w)),
    ),
    h(
      "div",
      { class: "tiles" },
      tile("tile-requests", `Calls, last ${window}`, requests.toLocaleString("en"), callRates(requests, graph, window)),
      tile("tile-denials", `Denied, last ${window}`, denials.toLocaleString("en"), deniedShare(graph, requests, denials), denials ? "bad" : "good"),
      findings.error
        ? tile("tile-findings", "Open findings, last 24h", "?", `could not be computed: ${findings.error.message}`, "warn")
        : tile("tile-findings", "Open findings, last 24h", String(open.length), open.length ? `${open.filter((f) => severityOf(f) === "high").length} high` : "nothing to look at", open.length ? "warn" : "good"),
      tile(
        "tile-ledger",
        "Ledger entries",
        ledger.entries.toLocaleString("en"),
        cp ? `last checkpoint ${fmtAge(age)} ago, covers ${cp.size.toLocaleString("en")}` : "no checkpoint yet",
        cp && ledger.entries - cp.size > 0 && age > 60 ? "warn" : "",
      ),
    ),
    h(
      "div",
      { class: "split" },
      h("div", { class: "panel" }, h("h2", {}, `Edges that need a look (last ${window})`), troubleTable(graph)),
      h(
        "div",
        { class: "panel" },
        h("h2", {}, "Latest findings"),
        open.length
          ? h(
              "ul",
              { class: "plain", id: "overview-findings" },
              open.slice(0, 6).map((f) => h("li", {}, badge(severityOf(f), severityOf(f) === "high" ? "bad" : "warn"), " ", h("a", { href: "#/findings" }, findingTitle(f)))),
            )
          : h("p", { class: "dim" }, "No findings."),
      ),
    ),
    h("div", { class: "spacer-sm" }),
    keyPanel(ledger.vkey),
    h("p", { class: "dim small" }, `Log ${ledger.origin}.`),
  );
  void clear;
}
