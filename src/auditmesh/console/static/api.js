// The console's only way to the server: fetch with the API token as a Bearer header.
//
// The token lives in sessionStorage (this tab, until it closes); every request carries it, so
// each read the console makes is the same audited API read `curl` would make.

const TOKEN_KEY = "auditmesh.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

let onUnauthorized = () => {};

/** The router's hook: called with the token the server refused (401). */
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

function url(path, query) {
  const target = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") {
      target.searchParams.set(key, String(value));
    }
  }
  return target;
}

async function send(path, { method = "GET", query, body, accept } = {}) {
  const sent = token();
  const headers = { Authorization: `Bearer ${sent}` };
  if (accept) headers.Accept = accept;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch (error) {
    throw new ApiError(0, `the server did not answer (${error.message})`);
  }
  if (response.status === 401) {
    onUnauthorized(sent);
    throw new ApiError(401, "the server refused the token; log in again");
  }
  return response;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const text = await response.text();
    try {
      const parsed = JSON.parse(text);
      message = parsed.error || parsed.detail || text;
    } catch {
      if (text) message = text;
    }
  } catch {
    // keep the status line
  }
  return new ApiError(response.status, message);
}

/** GET/POST a JSON endpoint; resolves to the parsed body, rejects with ApiError. */
export async function api(path, options = {}) {
  const response = await send(path, { ...options, accept: "application/json" });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** GET raw bytes (tiles, entry bundles) as a Uint8Array. */
export async function bytes(path) {
  const response = await send(path);
  if (!response.ok) throw await failure(response);
  return new Uint8Array(await response.arrayBuffer());
}

/** GET text (the checkpoint note). */
export async function text(path) {
  const response = await send(path);
  if (!response.ok) throw await failure(response);
  return response.text();
}

/** POST JSON, receive a file (evidence bundles) as a Blob. */
export async function download(path, body) {
  const response = await send(path, { method: "POST", body });
  if (!response.ok) throw await failure(response);
  return response.blob();
}
