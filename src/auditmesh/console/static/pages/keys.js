// The log's verifier key the browser checks checkpoint signatures with.
//
// By default it is the key this server serves (GET /console/api/overview). A key served by the
// same server proves only that the server signed what it serves; someone holding the key from
// elsewhere (an auditor, the deployment's config) pins it here, in localStorage, and from then
// on every proof on this browser is checked against that key instead.

import { api } from "../api.js";
import { parseVerifierKey } from "../proof.js";

const PIN_KEY = "auditmesh.vkey";

export function pinnedKey() {
  return localStorage.getItem(PIN_KEY) || "";
}

/** Pin `vkey`, or unpin with "". A key that is not one (not name+keyid+key, not Ed25519, an id
 * that does not match its key) is refused with the reason (a ProofError), as a proof would
 * refuse it, and the pin stays as it was. */
export async function pinKey(vkey) {
  const key = (vkey || "").trim();
  if (!key) {
    localStorage.removeItem(PIN_KEY);
    return;
  }
  await parseVerifierKey(key);
  localStorage.setItem(PIN_KEY, key);
}

/** Why the pinned key is not a verifier key (one pinned before pins were checked), or null. */
export async function pinnedKeyProblem() {
  const pinned = pinnedKey();
  if (!pinned) return null;
  try {
    await parseVerifierKey(pinned);
    return null;
  } catch (error) {
    return error.message;
  }
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
