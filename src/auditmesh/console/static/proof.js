// Inclusion proofs checked in the browser with WebCrypto, trusting nothing the server computed.
//
//   leaf hash    SHA-256(0x00 ‖ leaf data)                           RFC 9162 §2.1.1
//   path → root  the verifier of RFC 9162 §2.1.3.2, node SHA-256(0x01 ‖ l ‖ r)
//   checkpoint   C2SP tlog-checkpoint (origin, size, base64 root) inside a C2SP signed-note;
//                its Ed25519 signature is verified with WebCrypto against the verifier key,
//                given as a golang.org/x/mod/sumdb/note key "name+hex(keyid)+base64(0x01‖key)"
//   leaf data    the exact bytes the log hashed, from the C2SP tlog-tiles entry bundle
//                (2-byte big-endian length before each entry)
//
// Everything here is a pure function of bytes; the event page (pages/event.js) fetches the
// inputs and shows each step.

const encoder = new TextEncoder();

export class ProofError extends Error {
  constructor(message, { expected, computed } = {}) {
    super(message);
    this.expected = expected;
    this.computed = computed;
  }
}

export function b64decode(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

export function b64encode(data) {
  let binary = "";
  for (const byte of data) binary += String.fromCharCode(byte);
  return btoa(binary);
}

export function hex(data) {
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function equal(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

export function subtleAvailable() {
  return Boolean(globalThis.crypto && crypto.subtle);
}

async function sha256(...parts) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
}

/** RFC 9162 §2.1.1: the hash of a leaf's data. */
export function leafHash(data) {
  return sha256(Uint8Array.of(0), data);
}

function nodeHash(left, right) {
  return sha256(Uint8Array.of(1), left, right);
}

/** RFC 9162 §2.1.3.2: the root an inclusion proof leads to from `hash` at `index`. */
export async function rootFromInclusion(index, size, hash, path) {
  if (!(Number.isSafeInteger(index) && Number.isSafeInteger(size) && index >= 0)) {
    throw new ProofError("index and tree size must be whole numbers");
  }
  if (index >= size) {
    throw new ProofError(`leaf index ${index} is not below the tree size ${size}`);
  }
  let fn = index;
  let sn = size - 1;
  let r = hash;
  for (const p of path) {
    if (p.length !== 32) throw new ProofError("a proof hash is not 32 bytes");
    if (sn === 0) throw new ProofError("the proof has more hashes than the tree has levels");
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new ProofError("the proof has fewer hashes than the tree has levels");
  return r;
}

/** C2SP signed-note: the signed text (ending in a newline) and its signature lines. */
export function parseNote(note) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0 || !note.endsWith("\n")) throw new ProofError("the checkpoint is not a signed note");
  const text = note.slice(0, split + 1);
  const signatures = [];
  for (const line of note.slice(split + 2, -1).split("\n")) {
    const m = /^\u2014 (\S+) ([A-Za-z0-9+/=]+)$/.exec(line);
    if (!m) throw new ProofError(`malformed signature line: ${JSON.stringify(line)}`);
    const raw = b64decode(m[2]);
    if (raw.length < 5) throw new ProofError("a signature is too short");
    const keyId = ((raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]) >>> 0;
    signatures.push({ name: m[1], keyId, signature: raw.slice(4) });
  }
  return { text, signatures };
}

/** C2SP tlog-checkpoint body: origin, tree size, root hash, then optional extension lines. */
export function parseCheckpoint(text) {
  const lines = text.split("\n");
  if (lines.length < 4 || !/^\d+$/.test(lines[1])) {
    throw new ProofError("the checkpoint body is not origin, size and root hash");
  }
  const root = b64decode(lines[2]);
  if (root.length !== 32) throw new ProofError("the checkpoint root hash is not 32 bytes");
  const size = Number(lines[1]);
  if (!Number.isSafeInteger(size)) throw new ProofError("the checkpoint size is too large");
  return { origin: lines[0], size, root };
}

/** A sumdb/note verifier key: "name+hex(keyid)+base64(0x01 ‖ 32-byte Ed25519 key)". */
export async function parseVerifierKey(vkey) {
  const m = /^([^+\s]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/=]+)$/.exec(vkey.trim());
  if (!m) throw new ProofError("the verifier key is not name+keyid+key");
  const raw = b64decode(m[3]);
  if (raw.length !== 33 || raw[0] !== 1) throw new ProofError("the verifier key is not Ed25519");
  const keyId = parseInt(m[2], 16) >>> 0;
  // key id = first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ key)
  const digest = await sha256(encoder.encode(`${m[1]}\n`), raw);
  const computed = ((digest[0] << 24) | (digest[1] << 16) | (digest[2] << 8) | digest[3]) >>> 0;
  if (computed !== keyId) throw new ProofError("the verifier key's id does not match its key");
  return { name: m[1], keyId, publicKey: raw.slice(1) };
}

/**
 * Verify the note's signature by `key` with WebCrypto Ed25519.
 * Resolves to "verified", or "unsupported" when this browser's WebCrypto lacks Ed25519;
 * rejects with ProofError when no signature is by the key or the signature is wrong.
 */
export async function verifyNoteSignature(note, key) {
  const sig = note.signatures.find((x) => x.name === key.name && x.keyId === key.keyId);
  if (!sig) throw new ProofError(`the checkpoint carries no signature by ${key.name}`);
  let cryptoKey;
  try {
    cryptoKey = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, [
      "verify",
    ]);
  } catch (error) {
    if (error.name === "NotSupportedError") return "unsupported";
    throw error;
  }
  const ok = await crypto.subtle.verify(
    { name: "Ed25519" },
    cryptoKey,
    sig.signature,
    encoder.encode(note.text),
  );
  if (!ok) throw new ProofError(`the checkpoint signature by ${key.name} does not verify`);
  return "verified";
}

/** tlog-tiles <N>: 3-digit path elements, all but the last prefixed with "x". */
export function tileIndexPath(n) {
  const groups = [];
  do {
    groups.push(String(n % 1000).padStart(3, "0"));
    n = Math.floor(n / 1000);
  } while (n > 0);
  groups.reverse();
  return groups.map((g, i) => (i < groups.length - 1 ? `x${g}` : g)).join("/");
}

/** The entry bundle holding leaf `index` in a tree of `size` leaves, and the offset in it. */
export function entryBundleFor(index, size) {
  const tile = Math.floor(index / 256);
  const width = Math.min(256, size - tile * 256);
  const suffix = width < 256 ? `.p/${width}` : "";
  return { path: `/log/tile/entries/${tileIndexPath(tile)}${suffix}`, offset: index % 256 };
}

/** The `offset`-th entry of a tlog-tiles entry bundle. */
export function bundleEntry(bundle, offset) {
  let at = 0;
  for (let i = 0; at + 2 <= bundle.length; i++) {
    const length = (bundle[at] << 8) | bundle[at + 1];
    const start = at + 2;
    if (start + length > bundle.length) break;
    if (i === offset) return bundle.slice(start, start + length);
    at = start + length;
  }
  throw new ProofError(`the entry bundle has no entry ${offset}`);
}

/** JSON with object keys sorted: compares two parsed values for equality. */
export function stableJson(value) {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(",")}]`;
  if (value && typeof value === "object") {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

export { equal as bytesEqual };
