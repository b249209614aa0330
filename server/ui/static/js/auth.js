// The API key of this tab's session. Under `--auth required` the pages ask for one; it is kept in
// sessionStorage (this tab only, gone when the tab closes, never in a URL or a cookie) and sent
// as `Authorization: Bearer` on the pages' API calls. Imported by api.js, and by session.js on
// pages that call no API, always as "./auth.js" so every page holds one instance of it.

const STORAGE_KEY = "batchserve.apiKey";
const panel = document.getElementById("auth-panel");
const form = document.getElementById("auth-form");
const input = document.getElementById("auth-key");
const message = document.getElementById("auth-message");
const state = document.getElementById("auth-state");
const toggle = document.getElementById("auth-toggle");
const forget = document.getElementById("auth-forget");
const required = document.body.dataset.auth === "required";
const listeners = [];

let memoryKey = ""; // where the key lives when storage is disabled: as long as the page does

function currentKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY) || memoryKey;
  } catch {
    return memoryKey;
  }
}

function store(key) {
  memoryKey = key;
  try {
    if (key) sessionStorage.setItem(STORAGE_KEY, key);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // keep it in memory only
  }
}

export function authHeaders() {
  const key = currentKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// A key is needed before calling the API: the server requires one and none is set.
export function keyMissing() {
  return required && !currentKey();
}

function render() {
  const key = currentKey();
  if (state) state.textContent = key ? "An API key is set for this tab." : "No API key is set for this tab.";
  if (forget) forget.hidden = !key;
  if (toggle) {
    toggle.hidden = !required && !key;
    toggle.textContent = key ? "API key ✓" : "API key";
    toggle.setAttribute("aria-expanded", String(panel ? !panel.hidden : false));
  }
}

// Show the key form, saying why (the server's own sentence for a 401 or 403).
export function askForKey(reason) {
  if (!panel) return;
  if (reason && message) message.textContent = reason;
  panel.hidden = false;
  render();
  input.focus();
}

function hidePanel() {
  if (panel) panel.hidden = true;
  render();
}

// Run `fn` now when the API can be called, and again whenever the key changes.
export function whenKeyReady(fn) {
  listeners.push(fn);
  if (!keyMissing()) fn();
}

function changed() {
  render();
  if (!keyMissing()) listeners.forEach((fn) => fn());
}

if (form) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    store(key);
    input.value = "";
    if (message) message.textContent = "";
    hidePanel();
    changed();
  });
}
if (forget) {
  forget.addEventListener("click", () => {
    store("");
    render();
    if (required) askForKey("The key is forgotten; enter one to call the API again.");
  });
}
if (toggle) {
  toggle.addEventListener("click", () => {
    if (panel.hidden) askForKey("");
    else hidePanel();
  });
}

render();
if (keyMissing()) askForKey("This server needs an API key for its API. Enter yours to use this page.");
