// GET /v1/findings as the console shows it; the one place that knows its field names
// (analysis/findings.py `Finding.to_json`).

import { api } from "../api.js";

export const KINDS = {
  error_burst: "Error burst",
  latency_regression: "Latency regression",
  excessive_volume: "Excessive volume",
  new_edge: "New edge",
  repeated_denials: "Repeated denials",
  plaintext_calls: "Plaintext calls",
  failed_authentication: "Failed authentications",
};

export async function loadFindings(since) {
  const raw = await api("/v1/findings", { query: { since } });
  return { items: raw.findings || [], events: raw.events, window: raw.window, raw };
}

export function severityOf(finding) {
  return finding.severity || "medium";
}

export function kindOf(finding) {
  return KINDS[finding.kind] || finding.kind;
}

export function findingTitle(finding) {
  return `${kindOf(finding)}: ${finding.responsible} → ${finding.destination}`;
}
