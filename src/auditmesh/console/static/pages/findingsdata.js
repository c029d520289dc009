// GET /v1/findings as the console shows it; the one place that knows its field names.

import { api } from "../api.js";

export async function loadFindings(since) {
  const raw = await api("/v1/findings", { query: { since } });
  const items = Array.isArray(raw) ? raw : raw.findings || [];
  return { items, raw };
}

export function severityOf(finding) {
  return finding.severity || "medium";
}

export function findingTitle(finding) {
  const who = finding.identity || finding.responsible || finding.subject || "";
  const what = finding.title || finding.summary || finding.kind || "finding";
  return who ? `${what} — ${who}` : what;
}
