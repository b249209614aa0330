// The dashboard: charts of GET /v1/stats (computed in SQL from the event store), refreshed every
// few seconds while the tab is visible. Chart.js is the vendored UMD build (window.Chart).
import { ApiError, getJSON } from "./api.js";
import { whenKeyReady } from "./auth.js";

const root = document.getElementById("dashboard");
const statusLine = document.getElementById("dash-status"); // announced: problems and state changes only
const updatedLine = document.getElementById("dash-updated"); // not announced: changes every refresh
const windowSelect = document.getElementById("window-select");
const refreshMs = Number(root.dataset.refreshMs) || 5000;
const MAX_BACKOFF_MS = 60_000;
const TOP_CLASSES = 10;
const MAX_HISTOGRAM_SIZE = 1024;

const css = getComputedStyle(document.documentElement);
const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
const palette = {
  text: color("--muted", "#555"),
  grid: color("--grid", "rgba(0,0,0,0.08)"),
  primary: color("--primary", "#1f5fbf"),
  primarySoft: color("--primary-soft", "rgba(31,95,191,0.15)"),
  error: color("--danger", "#c0392b"),
  accent: color("--accent", "#e67e22"),
  good: color("--good", "#1e8449"),
};

// Minute buckets for windows up to 6 h, hours beyond (a day of minutes is too fine to read).
function bucketsFor(windowMinutes) {
  return windowMinutes > 360 ? { groupBy: "hour", stepMs: 3_600_000 } : { groupBy: "minute", stepMs: 60_000 };
}

// Bucket keys are ISO 8601 timestamps of the bucket start; a key without a zone is UTC.
export function bucketTime(key) {
  if (typeof key === "number") return key < 1e12 ? key * 1000 : key;
  const text = String(key);
  const zoned = /(Z|[+-]\d{2}:?\d{2})$/.test(text) ? text : `${text}Z`;
  return Date.parse(zoned.replace(" ", "T"));
}

// Every bucket of the window, oldest first, so quiet minutes show as zero rather than vanish.
export function timeline(groups, startMs, endMs, stepMs) {
  const first = Math.floor(startMs / stepMs) * stepMs;
  const count = Math.max(1, Math.floor((endMs - first) / stepMs) + 1);
  const rows = Array.from({ length: count }, (_, i) => ({ t: first + i * stepMs, group: null }));
  for (const group of groups) {
    const t = bucketTime(group.key);
    if (Number.isNaN(t)) continue;
    const index = Math.floor((t - first) / stepMs);
    if (index >= 0 && index < count) rows[index].group = group;
  }
  return rows;
}

function timeLabel(ms, stepMs) {
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return stepMs >= 3_600_000 ? `${d.toLocaleDateString([], { weekday: "short" })} ${hm}` : hm;
}

const common = {
  responsive: true,
  maintainAspectRatio: false,
  animation: false, // redrawn every few seconds: animating each refresh only costs CPU
  plugins: { legend: { labels: { color: palette.text, boxWidth: 12 } } },
};
const axis = (extra = {}) => ({
  ticks: { color: palette.text, maxRotation: 0, autoSkip: true, autoSkipPadding: 12 },
  grid: { color: palette.grid },
  ...extra,
});

function makeCharts() {
  return {
  traffic: new Chart(document.getElementById("traffic-chart"), {
    type: "line",
    data: {
      labels: [],
      datasets: [
        { label: "requests", data: [], borderColor: palette.primary, backgroundColor: palette.primarySoft, fill: true, pointRadius: 0, cubicInterpolationMode: "monotone" },
        { label: "errors", data: [], borderColor: palette.error, backgroundColor: palette.error, pointRadius: 0, cubicInterpolationMode: "monotone" },
      ],
    },
    options: { ...common, interaction: { mode: "index", intersect: false }, scales: { x: axis(), y: axis({ beginAtZero: true, ticks: { color: palette.text, precision: 0 } }) } },
  }),
  latency: new Chart(document.getElementById("latency-chart"), {
    type: "line",
    data: {
      labels: [],
      datasets: [
        { label: "p50", data: [], borderColor: palette.good, backgroundColor: palette.good, pointRadius: 2.5, spanGaps: false },
        { label: "p99", data: [], borderColor: palette.accent, backgroundColor: palette.accent, pointRadius: 2.5, spanGaps: false },
      ],
    },
    options: { ...common, interaction: { mode: "index", intersect: false }, scales: { x: axis(), y: axis({ beginAtZero: true }) } },
  }),
  batches: new Chart(document.getElementById("batch-chart"), {
    type: "bar",
    data: { labels: [], datasets: [{ label: "images", data: [], backgroundColor: palette.primary }] },
    options: { ...common, plugins: { legend: { display: false } }, scales: { x: axis({ title: { display: true, text: "batch size", color: palette.text } }), y: axis({ beginAtZero: true, ticks: { color: palette.text, precision: 0 } }) } },
  }),
  classes: new Chart(document.getElementById("classes-chart"), {
    type: "bar",
    data: { labels: [], datasets: [{ label: "predictions", data: [], backgroundColor: palette.accent }] },
    options: { ...common, indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: axis({ beginAtZero: true, ticks: { color: palette.text, precision: 0 } }), y: axis({ grid: { display: false } }) } },
  }),
  };
}

const eventsOn = root.dataset.events === "on";
const charts = eventsOn ? makeCharts() : null;

function updateTimeSeries(groups, windowMinutes, nowMs) {
  const { stepMs } = bucketsFor(windowMinutes);
  const rows = timeline(groups, nowMs - windowMinutes * 60_000, nowMs, stepMs);
  const labels = rows.map((r) => timeLabel(r.t, stepMs));
  charts.traffic.data.labels = labels;
  charts.traffic.data.datasets[0].data = rows.map((r) => (r.group ? r.group.requests : 0));
  charts.traffic.data.datasets[1].data = rows.map((r) => (r.group ? r.group.errors : 0));
  charts.latency.data.labels = labels;
  // No requests in a bucket means no latency, not zero latency: leave a gap.
  charts.latency.data.datasets[0].data = rows.map((r) => (r.group && r.group.latency_ms ? r.group.latency_ms.p50 : null));
  charts.latency.data.datasets[1].data = rows.map((r) => (r.group && r.group.latency_ms ? r.group.latency_ms.p99 : null));
  document.querySelectorAll(".bucket-unit").forEach((el) => { el.textContent = stepMs >= 3_600_000 ? "hour" : "minute"; });
}

function updateDistributions(stats) {
  const counts = new Map(Object.entries(stats.batch_size_histogram || {}).map(([size, n]) => [Number(size), n]));
  // Every size from 1 to the largest seen, so the shape of the distribution (and its gaps) shows.
  const largest = Math.min(MAX_HISTOGRAM_SIZE, Math.max(0, ...counts.keys()));
  const sizes = Array.from({ length: largest }, (_, i) => i + 1);
  charts.batches.data.labels = sizes.map(String);
  charts.batches.data.datasets[0].data = sizes.map((size) => counts.get(size) || 0);
  const top = (stats.top_classes || []).slice(0, TOP_CLASSES);
  charts.classes.data.labels = top.map((c) => c.label || `class ${c.class_id}`);
  charts.classes.data.datasets[0].data = top.map((c) => c.count);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

const fmt = (value, digits = 1) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));

function updateModels(groups) {
  const tbody = document.querySelector("#models-table tbody");
  if (!groups.length) {
    const row = document.createElement("tr");
    const td = cell("No requests in this window.");
    td.colSpan = 7;
    td.className = "muted";
    row.append(td);
    tbody.replaceChildren(row);
  } else {
    tbody.replaceChildren(...groups.map((g) => {
      const row = document.createElement("tr");
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = g.key ?? "(none)";
      const lat = g.latency_ms || {};
      row.append(name, cell(String(g.requests)), cell(String(g.errors)), cell(fmt(lat.p50)), cell(fmt(lat.p95)), cell(fmt(lat.p99)), cell(fmt(g.mean_batch_size, 2)));
      return row;
    }));
  }
  const requests = groups.reduce((n, g) => n + g.requests, 0);
  const errors = groups.reduce((n, g) => n + g.errors, 0);
  const batched = groups.filter((g) => g.mean_batch_size !== null && g.mean_batch_size !== undefined);
  const weight = batched.reduce((n, g) => n + g.requests, 0);
  const meanBatch = weight ? batched.reduce((n, g) => n + g.mean_batch_size * g.requests, 0) / weight : null;
  document.getElementById("tile-requests").textContent = String(requests);
  document.getElementById("tile-errors").textContent = String(errors);
  document.getElementById("tile-error-rate").textContent = requests ? `${((100 * errors) / requests).toFixed(1)}%` : "–";
  document.getElementById("tile-batch").textContent = meanBatch === null ? "–" : meanBatch.toFixed(2);
  return { requests, errors };
}

async function fetchStats() {
  const windowMinutes = Number(windowSelect.value) || 60;
  const nowMs = Date.now();
  const from = new Date(nowMs - windowMinutes * 60_000).toISOString();
  const { groupBy } = bucketsFor(windowMinutes);
  const query = (by) => `/v1/stats?${new URLSearchParams({ group_by: by, from })}`;
  const [series, byModel] = await Promise.all([getJSON(query(groupBy)), getJSON(query("model"))]);
  return { windowMinutes, nowMs, series, byModel };
}

function render({ windowMinutes, nowMs, series, byModel }) {
  updateTimeSeries(series.groups || [], windowMinutes, nowMs);
  updateDistributions(series);
  const totals = updateModels(byModel.groups || []);
  for (const chart of Object.values(charts)) chart.update("none");
  root.dataset.updatedAt = String(nowMs);
  return totals;
}

let timer = null;
let failures = 0;
let generation = 0; // answers of a superseded refresh (e.g. before a window change) are dropped

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(tick, delay);
}

async function tick() {
  if (document.hidden) return; // resumed by visibilitychange
  const mine = ++generation;
  try {
    const stats = await fetchStats();
    if (mine !== generation) return;
    const { requests, errors } = render(stats);
    failures = 0;
    const when = new Date().toLocaleTimeString();
    updatedLine.textContent = `Updated ${when}: ${requests} requests, ${errors} errors in the window.`;
    if (statusLine.textContent) statusLine.textContent = "";
    schedule(refreshMs);
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof ApiError && err.code === "events_disabled") {
      statusLine.textContent = err.message;
      return; // nothing will ever appear: stop polling
    }
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      statusLine.textContent = `Could not load statistics: ${err.message}.`;
      return; // resumed when a key is entered
    }
    failures += 1;
    const delay = Math.min(MAX_BACKOFF_MS, refreshMs * 2 ** failures);
    statusLine.textContent = `Could not load statistics: ${err.message}. Retrying in ${Math.round(delay / 1000)} s.`;
    schedule(delay);
  }
}

if (eventsOn) {
  windowSelect.addEventListener("change", () => schedule(0));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });
  whenKeyReady(() => { failures = 0; schedule(0); });
}
