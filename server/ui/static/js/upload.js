// The upload page: choose, drop or paste images; each chosen image gets a card with its preview
// and, once POST /v1/classify answers, its top-5 classes as bars plus model, latency and batch size.
import { ApiError, errorMessage, getJSON, request } from "./api.js";
import { whenKeyReady } from "./auth.js";

const TOP_K = 5;
const MAX_CARDS = 60;            // older cards (and their preview URLs) are dropped past this
const MULTIPART_OVERHEAD = 1024; // headers of one multipart part, roughly, in bytes

const form = document.getElementById("upload-form");
const input = document.getElementById("file-input");
const dropzone = document.getElementById("dropzone");
const modelSelect = document.getElementById("model-select");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const cardTemplate = document.getElementById("result-template");

const maxFiles = Math.max(1, Number(form.dataset.maxFiles) || 16);
const maxBytes = Math.max(1, Number(form.dataset.maxBytes) || 16 * 1024 * 1024);

function percent(score) {
  const value = score * 100;
  if (value > 0 && value < 0.1) return "<0.1%";
  return `${value.toFixed(1)}%`;
}

function ms(value) {
  return value >= 100 ? `${Math.round(value)} ms` : `${value.toFixed(1)} ms`;
}

// Requests of at most maxFiles images and (roughly) maxBytes each, so a large selection is not
// refused as a whole; a single file over the limit still goes alone and gets the server's answer.
export function chunk(items, filesPerRequest, bytesPerRequest) {
  const chunks = [];
  let current = [];
  let size = 0;
  for (const item of items) {
    const cost = item.file.size + MULTIPART_OVERHEAD;
    if (current.length && (current.length >= filesPerRequest || size + cost > bytesPerRequest)) {
      chunks.push(current);
      current = [];
      size = 0;
    }
    current.push(item);
    size += cost;
  }
  if (current.length) chunks.push(current);
  return chunks;
}

function newCard(file) {
  const card = cardTemplate.content.firstElementChild.cloneNode(true);
  const img = card.querySelector(".preview img");
  const url = URL.createObjectURL(file);
  img.src = url;
  img.alt = `Preview of ${file.name}`;
  // A file the browser cannot display (or that is no image at all) keeps its card, without a picture.
  img.addEventListener("error", () => card.querySelector(".preview").classList.add("no-preview"), { once: true });
  card.dataset.previewUrl = url;
  card.querySelector(".filename").textContent = file.name || "pasted image";
  return card;
}

function trimHistory() {
  const cards = results.querySelectorAll(".result");
  for (let i = MAX_CARDS; i < cards.length; i += 1) {
    URL.revokeObjectURL(cards[i].dataset.previewUrl);
    cards[i].remove();
  }
}

function showResult(card, result) {
  card.querySelector(".pending").hidden = true;
  const bars = card.querySelector(".bars");
  bars.replaceChildren();
  result.predictions.forEach((p, index) => {
    const li = document.createElement("li");
    li.className = index === 0 ? "bar top" : "bar";
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = p.label;
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(p.score);
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    // CSSOM writes are allowed under the page's style-src 'self' policy; style attributes are not.
    fill.style.width = `${Math.max(0, Math.min(100, p.score * 100)).toFixed(2)}%`;
    track.append(fill);
    li.append(label, value, track);
    li.dataset.classId = String(p.class_id);
    bars.append(li);
  });
  bars.hidden = false;
  const meta = card.querySelector(".meta");
  const t = result.timing_ms;
  meta.replaceChildren(
    span("meta-model", `${result.model} v${result.model_version}`), " · ",
    span("meta-latency", `${ms(t.total)} (queue ${ms(t.queue)}, inference ${ms(t.inference)})`), " · ",
    span("meta-batch", `batch of ${result.batch_size}`),
  );
  meta.hidden = false;
  card.classList.add("done");
  card.setAttribute("aria-busy", "false");
  const top = result.predictions[0];
  return top ? `${result.filename || "image"}: ${top.label}, ${percent(top.score)}` : `${result.filename}: no prediction`;
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

function showError(card, message, code) {
  card.querySelector(".pending").hidden = true;
  const error = card.querySelector(".error");
  error.textContent = message;
  error.dataset.code = code || "";
  error.hidden = false;
  card.classList.add("failed");
  card.setAttribute("aria-busy", "false");
  return `${card.querySelector(".filename").textContent}: ${message}`;
}

async function classifyChunk(items, model) {
  const data = new FormData();
  for (const { file } of items) data.append("image", file, file.name || "image");
  const params = new URLSearchParams({ top_k: String(TOP_K) });
  if (model) params.set("model", model);
  try {
    const { status, body } = await request(`/v1/classify?${params}`, { method: "POST", body: data });
    if (Array.isArray(body.results)) {
      return items.map(({ card }, i) => {
        const entry = body.results[i];
        if (!entry) return showError(card, "the server sent no result for this file", "missing_result");
        return entry.error ? showError(card, entry.error.message, entry.error.code) : showResult(card, entry);
      });
    }
    // The request failed as a whole (unknown model, body too large, server draining…).
    const message = errorMessage(body, status);
    const code = body.error && body.error.code;
    return items.map(({ card }) => showError(card, message, code));
  } catch (err) {
    const message = err instanceof ApiError ? err.message : `unexpected error: ${err}`;
    return items.map(({ card }) => showError(card, message, err.code));
  }
}

async function classify(files) {
  const images = Array.from(files);
  if (!images.length) return;
  const items = images.map((file) => ({ file, card: newCard(file) }));
  const fragment = document.createDocumentFragment();
  items.forEach(({ card }) => fragment.append(card));
  results.prepend(fragment);
  trimHistory();
  const noun = images.length === 1 ? "image" : "images";
  statusLine.textContent = `Classifying ${images.length} ${noun}…`;
  const model = modelSelect.value;
  // All chunks at once: the server batches them together anyway.
  const outcomes = await Promise.all(chunk(items, maxFiles, maxBytes).map((part) => classifyChunk(part, model)));
  statusLine.textContent = outcomes.flat().join(". ") + ".";
}

async function loadModels() {
  try {
    const body = await getJSON("/v1/models");
    const latest = new Map();
    for (const m of body.models) {
      if (!latest.has(m.name) || latest.get(m.name).version < m.version) latest.set(m.name, m);
    }
    if (!latest.size) return;
    const wanted = modelSelect.value || body.default_model;
    modelSelect.replaceChildren(
      ...[...latest.values()].map((m) => {
        const option = new Option(`${m.name} v${m.version} · ${m.execution_providers.join(", ")}`, m.name);
        option.selected = m.name === wanted;
        return option;
      }),
    );
  } catch (err) {
    // The server-rendered default stays selectable; the API will say what is wrong on upload.
    statusLine.textContent = `Could not list models: ${err.message}`;
  }
}

input.addEventListener("change", () => {
  classify(input.files);
  input.value = ""; // choosing the same file again should classify it again
});

for (const type of ["dragenter", "dragover"]) {
  dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "dragend", "drop"]) {
  dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
}
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  classify(event.dataTransfer.files);
});
// A file dropped beside the zone would otherwise make the browser navigate away to it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

document.addEventListener("paste", (event) => {
  const files = Array.from(event.clipboardData ? event.clipboardData.files : []);
  if (files.length) classify(files);
});

form.addEventListener("submit", (event) => event.preventDefault());

whenKeyReady(loadModels);
