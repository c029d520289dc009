// DOM building and formatting helpers for the console's views.
//
// Event data is attacker-controlled (paths, user agents, labels): it only ever enters the page
// as text nodes or attribute values through h(), never as HTML, and its invisible characters
// are shown (`visible`).

const SVG_NS = "http://www.w3.org/2000/svg";

// Characters that change how the text around them reads without showing themselves: bidi
// overrides, embeddings and isolates (a caller named "x\u202e" made "x → payments" read
// "x stnemyap →"), zero-width characters (a second service that reads "payments") and the
// C0 and C1 controls but tab and line breaks.
const HIDDEN = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;
const NAMED = new Set(["title", "aria-label"]); // attributes that are shown, as text is

/** Text with each hidden character written out as [U+202E], as it is in the event. */
export function visible(text) {
  return String(text).replace(HIDDEN, (c) => `[U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}]`);
}

function build(element, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(element.dataset, value);
    } else {
      const text = value === true ? "" : String(value);
      element.setAttribute(key, NAMED.has(key) ? visible(text) : text);
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(visible(child)));
  }
  return element;
}

/** h("a", {href: "#/x"}, "text", child, [more]) → an HTML element. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** s("circle", {cx: 1}) → an SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

export function nsToDate(ns) {
  return new Date(Number(BigInt(ns) / 1000000n));
}

export function fmtTime(ns) {
  if (ns === undefined || ns === null) return "";
  const d = nsToDate(ns);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return (
    `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.` +
    `${pad(d.getUTCMilliseconds(), 3)}Z`
  );
}

/** RFC 3339 in UTC to the nanosecond, trailing zeros dropped (2026-11-29T04:12:00.5Z): what
 * the API's since and until read back as the same nanosecond. */
export function fmtRfc3339(ns) {
  let seconds = BigInt(ns) / 1000000000n;
  let rest = BigInt(ns) % 1000000000n;
  if (rest < 0n) {
    rest += 1000000000n;
    seconds -= 1n;
  }
  const whole = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  const fraction = rest ? `.${String(rest).padStart(9, "0").replace(/0+$/, "")}` : "";
  return `${whole}${fraction}Z`;
}

export function fmtDurationUs(us) {
  if (us === undefined || us === null) return "";
  if (us < 1000) return `${us} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 1 : 0)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

export function fmtAge(seconds) {
  if (seconds === undefined || seconds === null) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MiB`;
  return `${(n / 1073741824).toFixed(2)} GiB`;
}

export function fmtRate(perSecond) {
  if (perSecond === undefined || perSecond === null || Number.isNaN(perSecond)) return "—";
  if (perSecond <= 0) return "0/s";
  if (perSecond >= 100) return `${Math.round(perSecond)}/s`;
  if (perSecond >= 1) return `${perSecond.toFixed(1)}/s`;
  if (perSecond * 60 >= 1) return `${(perSecond * 60).toFixed(1)}/min`;
  if (perSecond * 3600 >= 1) return `${(perSecond * 3600).toFixed(1)}/h`;
  // one call in a day read "0.0/h": a rate that is not zero never shows as zero
  if (perSecond * 86400 >= 0.1) return `${(perSecond * 86400).toFixed(1)}/day`;
  return "< 0.1/day";
}

const RATE_UNITS = [
  { name: "s", per: 1 },
  { name: "min", per: 60 },
  { name: "h", per: 3600 },
  { name: "day", per: 86400 },
];

/** The unit `fmtRate` would show the largest of `rates` in (per second): a table shows all its
 * rates in it, so rows compare at a glance ("7.0/s" beside "0.81/s", not beside "48.9/min"). */
export function rateUnit(rates) {
  const largest = Math.max(0, ...rates.filter((r) => Number.isFinite(r)));
  return RATE_UNITS.find((u) => largest * u.per >= 1) || RATE_UNITS[RATE_UNITS.length - 1];
}

/** A rate (per second) in `unit` (`rateUnit`): as `fmtRate` above 1, two significant digits
 * below, and never a non-zero rate as zero ("< 0.01/s"). */
export function fmtRateIn(perSecond, unit) {
  if (perSecond === undefined || perSecond === null || Number.isNaN(perSecond)) return "—";
  if (perSecond <= 0) return `0/${unit.name}`;
  const value = perSecond * unit.per;
  if (value >= 100) return `${Math.round(value)}/${unit.name}`;
  if (value >= 0.995) return `${value.toFixed(1)}/${unit.name}`;
  if (value >= 0.01) return `${value.toPrecision(2)}/${unit.name}`;
  return `< 0.01/${unit.name}`;
}

export function fmtPercent(fraction) {
  if (fraction === undefined || fraction === null) return "—";
  const p = fraction * 100;
  return `${p >= 10 || p === 0 ? Math.round(p) : p.toFixed(1)}%`;
}

/** The short name people use for a SPIFFE ID: the service account, else the whole ID. */
export function shortId(identity) {
  if (!identity) return "";
  const m = /\/sa\/([^/]+)$/.exec(identity);
  return m ? m[1] : identity.replace(/^spiffe:\/\//, "");
}

// The name of a party that proved no identity and named no service or address: what the service
// graph, `auditmesh query` and `auditmesh trace` print (analysis/query.py UNKNOWN), and what
// the events filters take for it.
export const UNKNOWN = "unknown";

/** A party's name as people say it, as analysis/trace.py `peer_name` gives it: service, else
 * SPIFFE ID (through `identity`, e.g. shortId), else address, else UNKNOWN. */
export function peerName(peer, identity = (id) => id) {
  if (!peer) return UNKNOWN;
  if (peer.service) return peer.service;
  if (peer.identity) return identity(peer.identity);
  if (peer.ip) return peer.port === undefined || peer.port === null ? peer.ip : `${peer.ip}:${peer.port}`;
  return UNKNOWN;
}

/** A pill for a decision, status or outcome: class names map to colours in console.css. */
export function badge(text, kind) {
  return h("span", { class: `badge ${kind || ""}` }, text);
}

/** Who vouches for the event: our sidecar saw the call (attested), or someone reported it
 * (an ingested access log, span or relayed record: `reporter` says which). */
export function provenanceBadge(event) {
  const element = badge(event.attested ? "observed" : "reported", event.attested ? "good" : "warn");
  element.classList.add("provenance");
  element.title = visible(
    event.attested
      ? `seen by the auditmesh sidecar ${event.reporter}`
      : `reported by ${event.reporter}, not observed by an auditmesh sidecar`,
  );
  return element;
}

export function decisionBadge(decision) {
  if (!decision) return "";
  return badge(decision, decision === "deny" ? "bad" : decision === "audit" ? "warn" : "good");
}

export function statusBadge(status) {
  if (status === undefined || status === null) return "";
  return badge(String(status), status >= 500 ? "bad" : status >= 400 ? "warn" : "good");
}

/** A panel that says what went wrong, in red. */
export function errorPanel(message) {
  return h("div", { class: "panel bad", role: "alert" }, message);
}

/** An event id short enough for a list: its first 8 digits and its last 6. Not its first 13
 * characters: a UUIDv7 begins with its millisecond, so those read the same for every event
 * of that millisecond. */
export function shortEventId(id) {
  return `${id.slice(0, 8)}…${id.slice(-6)}`;
}

/** A link to an event; shown as `text` (a short form), its whole id is the link's title. */
export function eventLink(id, text) {
  return h("a", { href: `#/event/${encodeURIComponent(id)}`, class: "mono", title: id }, text || id);
}

export function traceLink(traceId, text) {
  return h("a", { href: `#/trace/${encodeURIComponent(traceId)}`, class: "mono", title: traceId }, text || traceId);
}
