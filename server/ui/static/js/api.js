// Talking to batchserve's public API from the pages: one error type whose message is the
// server's own sentence ({"error": {"code", "message"}}), never a stack trace or raw HTML.
// Every call carries the tab's API key; an answer saying the key is missing, wrong or lacks a
// scope (401, 403) opens the key form with the server's sentence.
import { askForKey, authHeaders } from "./auth.js";

export class ApiError extends Error {
  constructor(message, { status = 0, code = "network_error", body = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

// The human sentence in an error body, whatever route family produced it.
export function errorMessage(body, status) {
  const err = body && body.error;
  if (err && typeof err === "object" && typeof err.message === "string") return err.message;
  if (typeof err === "string") return err;
  return `the server answered HTTP ${status}`;
}

async function readJSON(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    // A proxy in front of the server may answer with an HTML error page.
    return null;
  }
}

// fetch() + JSON, returning {status, body} for any answer that carries JSON, so callers can read
// per-file results even when the overall status is an error. Throws ApiError otherwise.
export async function request(url, options = {}) {
  let response;
  try {
    const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
    response = await fetch(url, { ...options, headers });
  } catch (err) {
    throw new ApiError(`could not reach the server (${err.message})`);
  }
  const body = await readJSON(response);
  if (body === null) {
    throw new ApiError(`the server answered HTTP ${response.status} without a JSON body`, { status: response.status, code: "bad_response" });
  }
  if (response.status === 401 || response.status === 403) askForKey(errorMessage(body, response.status));
  return { status: response.status, ok: response.ok, body };
}

// GET a JSON document; a non-2xx answer becomes an ApiError carrying the server's message.
export async function getJSON(url) {
  const { status, ok, body } = await request(url);
  if (!ok) {
    const code = body && body.error && body.error.code ? body.error.code : "http_error";
    throw new ApiError(errorMessage(body, status), { status, code, body });
  }
  return body;
}

// GET a text document (the Prometheus exposition of /metrics); failures as getJSON's, except that
// only a missing or wrong key (401) opens the key form: a key without the scope (403) is for the
// caller to report, since the page's main panel already asks for a better key when it needs one.
export async function getText(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "text/plain", ...authHeaders() } });
  } catch (err) {
    throw new ApiError(`could not reach the server (${err.message})`);
  }
  const text = await response.text();
  if (response.ok) return text;
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not an error document of ours: the status alone tells
  }
  if (response.status === 401) askForKey(errorMessage(body, response.status));
  const code = body && body.error && body.error.code ? body.error.code : "http_error";
  throw new ApiError(errorMessage(body, response.status), { status: response.status, code, body });
}
