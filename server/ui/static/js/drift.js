// The dashboard's drift panel: each model's drift gauges read from GET /metrics (Prometheus text),
// refreshed every few seconds while the tab is visible; the PSI chart keeps what this page saw.
import { ApiError, getText } from "./api.js";
import { whenKeyReady } from "./auth.js";

const root = document.getElementById("drift");
const statusLine = document.getElementById("drift-status");
const refreshMs = Number(root.dataset.refreshMs) || 5000;
const MAX_BACKOFF_MS = 60_000;
const MAX_POINTS = 120; // ten minutes at the default refresh
export const ALERT_PSI = 0.2; // deploy/prometheus/alerts.yml
const MODERATE_PSI = 0.1;

const GAUGES = {
  batchserve_drift_psi: "psi",
  batchserve_mean_confidence: "confidence",
  batchserve_low_confidence_ratio: "low",
  batchserve_drift_reference_mean_confidence: "referenceConfidence",
  batchserve_drift_input_brightness: "brightness",
  batchserve_drift_input_size_psi: "sizePsi",
  batchserve_drift_window_answers: "window",
  batchserve_drift_reference_answers: "reference",
};

function unescape(value) {
  return value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
}

// The drift gauges of an exposition, by model: {model: {psi, confidence, ...}}. `enabled` says
// whether the server exports drift at all (its TYPE lines appear even before any answer).
export function parseDrift(text) {
  const models = new Map();
  let enabled = false;
  for (const line of text.split("\n")) {
    if (line.startsWith("# TYPE batchserve_drift_psi ")) enabled = true;
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match || !(match[1] in GAUGES)) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key] = unescape(value);
    }
    if (labels.model === undefined) continue;
    if (!models.has(labels.model)) models.set(labels.model, {});
    models.get(labels.model)[GAUGES[match[1]]] = Number(match[3]);
  }
  return { enabled, models };
}

export function psiLevel(value) {
  if (value === undefined) return { text: "waiting", css: "" };
  if (value > ALERT_PSI) return { text: "drift", css: "psi-drift" };
  if (value > MODERATE_PSI) return { text: "moderate", css: "psi-moderate" };
  return { text: "stable", css: "psi-stable" };
}

const css = getComputedStyle(document.documentElement);
const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
const text = color("--muted", "#555");
const grid = color("--grid", "rgba(0,0,0,0.08)");
const danger = color("--danger", "#c0392b");
const SERIES = [color("--primary", "#1f5fbf"), color("--accent", "#e67e22"), color("--good", "#1e8449"), "#8e44ad", "#16a085"];

function makeChart() {
  // The canvas is made here, with the chart it holds: without this script there is nothing to draw.
  const canvas = document.createElement("canvas");
  canvas.id = "drift-chart";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "Class mix PSI per model over time");
  document.getElementById("drift-chart-box").append(canvas);
  return new Chart(canvas, {
    type: "line",
    data: { labels: [], datasets: [] },
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { labels: { color: text, boxWidth: 12 } } },
      scales: {
        x: { ticks: { color: text, maxRotation: 0, autoSkip: true, autoSkipPadding: 12 }, grid: { color: grid } },
        y: { beginAtZero: true, suggestedMax: 0.3, ticks: { color: text }, grid: { color: grid } },
      },
    },
  });
}

const enabled = root.dataset.drift === "on";
const chart = enabled ? makeChart() : null;

function cell(content, className = "") {
  const td = document.createElement("td");
  td.textContent = content;
  if (className) td.className = className;
  return td;
}

const fixed = (value, digits) => (value === undefined ? "–" : value.toFixed(digits));
const percent = (value) => (value === undefined ? "–" : `${(100 * value).toFixed(1)}%`);

function updateTable(models) {
  const tbody = document.querySelector("#drift-table tbody");
  if (!models.size) {
    const row = document.createElement("tr");
    const td = cell("No answers yet.", "muted");
    td.colSpan = 9;
    row.append(td);
    tbody.replaceChildren(row);
    return;
  }
  tbody.replaceChildren(...[...models.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, g]) => {
    const row = document.createElement("tr");
    row.dataset.model = name;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    const level = psiLevel(g.psi);
    const psi = cell("");
    const pill = document.createElement("span");
    pill.className = `pill ${level.css}`;
    pill.textContent = g.psi === undefined ? level.text : `${g.psi.toFixed(3)} ${level.text}`;
    psi.append(pill);
    psi.className = "psi";
    const reference = g.psi === undefined && g.referenceConfidence === undefined
      ? `collecting (${g.reference ?? 0})` : String(g.reference ?? "–");
    row.append(th, psi, cell(fixed(g.confidence, 3)), cell(fixed(g.referenceConfidence, 3)), cell(percent(g.low)),
      cell(fixed(g.brightness, 1)), cell(fixed(g.sizePsi, 3)), cell(String(g.window ?? 0)), cell(reference));
    return row;
  }));
}

function updateChart(models, when) {
  const data = chart.data;
  data.labels.push(when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }));
  const gaps = () => Array(data.labels.length - 1).fill(null); // a series that starts late lines up
  if (!data.datasets.length) {
    data.datasets.push({ id: "alert", label: `alert (${ALERT_PSI})`, data: [], borderColor: danger,
      backgroundColor: danger, borderDash: [6, 4], pointRadius: 0, borderWidth: 1 });
  }
  const [threshold, ...series] = data.datasets;
  threshold.data = Array(data.labels.length).fill(ALERT_PSI);
  for (const [name, g] of models) {
    let dataset = series.find((d) => d.label === name);
    if (!dataset) {
      const colour = SERIES[series.length % SERIES.length];
      dataset = { label: name, data: gaps(), borderColor: colour, backgroundColor: colour, pointRadius: 0,
        spanGaps: false };
      series.push(dataset);
      data.datasets.push(dataset);
    }
    dataset.data.push(g.psi ?? null);
  }
  for (const dataset of series) {
    if (dataset.data.length < data.labels.length) dataset.data.push(null); // a model no longer loaded
  }
  while (data.labels.length > MAX_POINTS) {
    data.labels.shift();
    for (const dataset of data.datasets) dataset.data.shift();
  }
  chart.update("none");
}

let timer = null;
let failures = 0;

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(tick, delay);
}

async function tick() {
  if (document.hidden) return; // resumed by visibilitychange
  try {
    const { enabled: exported, models } = parseDrift(await getText("/metrics"));
    failures = 0;
    if (!exported) {
      statusLine.textContent = "This server exports no drift figures.";
      return;
    }
    updateTable(models);
    updateChart(models, new Date());
    root.dataset.updatedAt = String(Date.now());
    if (statusLine.textContent.trim()) statusLine.textContent = "";
    schedule(refreshMs);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      statusLine.textContent = `Could not load drift figures: ${err.message}.`;
      return; // resumed when a key is entered
    }
    failures += 1;
    const delay = Math.min(MAX_BACKOFF_MS, refreshMs * 2 ** failures);
    statusLine.textContent = `Could not load drift figures: ${err.message}. Retrying in ${Math.round(delay / 1000)} s.`;
    schedule(delay);
  }
}

if (enabled) {
  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });
  whenKeyReady(() => { failures = 0; schedule(0); });
}
