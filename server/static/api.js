// REST calls (DESIGN section 4) and the session token kept in localStorage.
// No DOM here.

const TOKEN_KEY = "giftstream.token";
const USER_KEY = "giftstream.user";

/** A refused or failed request: `code` is the server's stable code ("network" when
 * the server could not be reached), `message` its human text. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let unauthorizedHandler = null;

/** Called once a request that carried a token is answered 401: the token is no good. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

function storageGet(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null; // storage disabled: the session lives as long as the page
  }
}

function storageSet(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    // storage disabled or full: keep going with the in-memory session
  }
}

let session = loadSession();

function loadSession() {
  const token = storageGet(TOKEN_KEY);
  if (!token) return null;
  let user = null;
  try {
    user = JSON.parse(storageGet(USER_KEY) || "null");
  } catch {
    user = null;
  }
  return { token, user: user && typeof user === "object" ? user : { user_id: "", name: "" } };
}

/** {token, user: {user_id, name}} or null. */
export function getSession() {
  return session;
}

export function saveSession(token, user) {
  session = token ? { token, user } : null;
  storageSet(TOKEN_KEY, token || null);
  storageSet(USER_KEY, token ? JSON.stringify(user) : null);
}

/** A unique id for request_id / idempotency_key. crypto.randomUUID exists only in
 * secure contexts (https, localhost); a page served over plain http on a LAN address
 * still has getRandomValues. */
export function newRequestId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** One JSON request. Resolves to the parsed body; rejects with ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = session ? session.token : null;
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "Can't reach the server. Check your connection and try again.");
  }
  let data = null;
  const text = await response.text().catch(() => "");
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const code = data && typeof data.code === "string" ? data.code : `http_${response.status}`;
    const message =
      data && typeof data.message === "string" ? data.message : `${response.status} ${response.statusText}`.trim();
    if (response.status === 401 && token && unauthorizedHandler) unauthorizedHandler();
    throw new ApiError(response.status, code, message);
  }
  return data;
}
