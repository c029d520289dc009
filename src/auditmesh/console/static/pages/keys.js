// The log's verifier key the browser checks checkpoint signatures with.
//
// By default it is the key this server serves (GET /console/api/overview). A key served by the
// same server proves only that the server signed what it serves; someone holding the key from
// elsewhere (an auditor, the deployment's config) pins it here, in localStorage, and from then
// on every proof on this browser is checked against that key instead.

import { api } from "../api.js";

const PIN_KEY = "auditmesh.vkey";

export function pinnedKey() {
  return localStorage.getItem(PIN_KEY) || "";
}

export function pinKey(vkey) {
  if (vkey) localStorage.setItem(PIN_KEY, vkey.trim());
  else localStorage.removeItem(PIN_KEY);
}

let served = null;

export async function servedKey() {
  if (served === null) served = (await api("/console/api/overview")).vkey;
  return served;
}

export async function verifierKey() {
  const pinned = pinnedKey();
  if (pinned) return { vkey: pinned, source: "pinned" };
  return { vkey: await servedKey(), source: "server" };
}
