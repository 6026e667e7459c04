// lsproxy status page: polls /status and /rates every second and renders them.
// Plain DOM, no framework, no build step. Text goes in with textContent only:
// upstream error descriptions are foreign text and must never become markup.
"use strict";

const POLL_MS = 1000;
const TICK_MS = 250;
const sections = new Map(); // stream name -> its <section>
let countdowns = []; // {el, deadline (performance.now() ms), connection, why}
let updates = 0;

const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");
const secs = (s) => (typeof s === "number" ? s.toFixed(1) : "–");
const clock = (unix) => new Date(unix * 1000).toISOString().slice(11, 19) + "Z";

function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function field(section, name) {
  return section.querySelector(`[data-field="${name}"]`);
}

function set(section, name, text) {
  const el = field(section, name);
  if (el.textContent !== text) el.textContent = text;
  return el;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell && typeof cell === "object") {
      td.textContent = cell.text;
      if (cell.cls) td.className = cell.cls;
      if (cell.key) td.dataset.key = cell.key;
    } else {
      td.textContent = cell;
    }
    tr.appendChild(td);
  }
  return tr;
}

function sectionFor(name) {
  let section = sections.get(name);
  if (!section) {
    const template = document.getElementById("stream-template");
    section = template.content.firstElementChild.cloneNode(true);
    section.dataset.stream = name;
    field(section, "name").textContent = name;
    document.getElementById("streams").appendChild(section);
    sections.set(name, section);
  }
  return section;
}

function errorText(err) {
  if (!err) return "";
  const status = err.status != null ? `${err.status}: ` : "";
  return status + (err.message || err.description || err.error || "");
}

function renderStream(name, snap, rates, receivedAt) {
  const section = sectionFor(name);
  const state = set(section, "state", snap.state || "unknown");
  state.className = "state " + (snap.state || "");
  set(section, "url", snap.url || "");

  const series = (rates && rates.per_second) || [];
  const recent = series.slice(-10);
  const rate = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
  set(section, "rate", fmt(Math.round(rate)));
  set(section, "records_received", fmt(snap.records_received));
  set(section, "records_delivered", fmt(snap.records_delivered));
  set(section, "duplicates_dropped", fmt(snap.duplicates_dropped));
  const consumers = Array.isArray(snap.consumers) ? snap.consumers : [];
  set(section, "consumers_connected", fmt(consumers.filter((c) => c.connected).length));
  const log = snap.log || {};
  set(section, "retained", `${fmt(log.next - log.oldest)} records, ${bytes(log.retained_bytes)}`);
  const storage = snap.storage;
  const storageEl = set(section, "storage", !storage ? "memory only" : storage.persisting ? "persisting" : `NOT persisting: ${storage.error || ""}`);
  storageEl.className = "value" + (storage && !storage.persisting ? " lagging" : "");
  const token = snap.token || {};
  set(section, "token", token.expires_in != null ? `expires in ${Math.round(token.expires_in)} s` : (token.kind || "–") + (token.failures ? `, ${token.failures} failures` : ""));

  const connBody = field(section, "connections");
  connBody.replaceChildren();
  (snap.upstream_connections || []).forEach((conn, i) => {
    const wait = conn.next_attempt_in;
    if (wait != null) {
      countdowns.push({ deadline: receivedAt + wait * 1000, connection: i + 1, why: errorText(conn.last_error), section });
    }
    connBody.appendChild(row([
      String(i + 1), { text: conn.state, key: "state" }, fmt(conn.attempts), fmt(conn.connects),
      fmt(conn.records_received), { text: wait != null ? `in ${secs(wait)} s` : "–", key: "next_attempt" },
      { text: errorText(conn.last_error), key: "last_error" },
    ]));
  });

  const consumerBody = field(section, "consumers");
  consumerBody.replaceChildren();
  for (const c of consumers) {
    const tr = row([
      { text: c.id != null ? c.id : "(anonymous)", key: "id" }, c.connected ? "yes" : "no", fmt(c.cursor),
      { text: fmt(c.lag), key: "lag", cls: c.lag > 0 ? "lagging" : "" },
      { text: secs(c.lag_seconds), key: "lag_seconds" }, fmt(c.skipped), fmt(c.connections),
    ]);
    tr.dataset.consumer = c.id != null ? c.id : "";
    consumerBody.appendChild(tr);
  }
  if (!consumers.length) consumerBody.appendChild(row(["no consumers", "", "", "", "", "", ""]));

  // Consumer groups (maxConnections 2..8): members connected of N, and the worst share's lag.
  const groups = Array.isArray(snap.groups) ? snap.groups : [];
  set(section, "groups", groups.length
    ? groups.map((g) => {
        const lags = (g.shares || []).map((x) => x.lag || 0);
        const worst = lags.length ? Math.max(...lags) : 0;
        return `${g.id === null ? "(anonymous)" : g.id}: ${g.members}/${g.connections} members, lag ${fmt(worst)}`;
      }).join("; ")
    : "no consumer groups");

  const errors = field(section, "errors");
  errors.replaceChildren();
  for (const err of snap.recent_errors || []) {
    const li = document.createElement("li");
    li.textContent = `${clock(err.at)} #${err.connection || 1} ${errorText(err)}`;
    errors.appendChild(li);
  }
  if (!errors.children.length) {
    const li = document.createElement("li");
    li.textContent = "none";
    errors.appendChild(li);
  }

  drawChart(field(section, "chart"), series);
  set(section, "peak", fmt(Math.max(0, ...series)));
}

function drawChart(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const styles = getComputedStyle(document.documentElement);
  const pad = { left: 48, right: 8, top: 10, bottom: 20 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const peak = Math.max(1, ...series);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = styles.getPropertyValue("--muted");
  ctx.strokeStyle = styles.getPropertyValue("--line");
  ctx.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const y = pad.top + h - frac * h;
    ctx.beginPath(); ctx.moveTo(pad.left, y); ctx.lineTo(pad.left + w, y); ctx.stroke();
    ctx.fillText(fmt(Math.round(frac * peak)), 4, y + 4);
  }
  ctx.fillText("-10 min", pad.left, height - 4);
  ctx.fillText("now", pad.left + w - 20, height - 4);
  const n = series.length;
  if (n > 1) {
    const x = (i) => pad.left + (i / (n - 1)) * w;
    const y = (v) => pad.top + h - (v / peak) * h;
    ctx.beginPath();
    series.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.strokeStyle = styles.getPropertyValue("--chart");
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(x(n - 1), pad.top + h); ctx.lineTo(x(0), pad.top + h); ctx.closePath();
    ctx.globalAlpha = 0.12; ctx.fillStyle = styles.getPropertyValue("--chart"); ctx.fill(); ctx.globalAlpha = 1;
  }
  // For tests and curious operators: what was drawn.
  canvas.dataset.points = String(series.filter((v) => v > 0).length);
  canvas.dataset.peak = String(Math.max(0, ...series));
}

function tick() {
  const now = performance.now();
  const bySection = new Map();
  for (const cd of countdowns) {
    if (!bySection.has(cd.section)) bySection.set(cd.section, []);
    bySection.get(cd.section).push(cd);
  }
  for (const section of sections.values()) {
    const el = field(section, "countdown");
    const waits = bySection.get(section) || [];
    if (!waits.length) { el.hidden = true; continue; }
    const next = waits.reduce((a, b) => (a.deadline <= b.deadline ? a : b));
    const left = Math.max(0, (next.deadline - now) / 1000);
    el.hidden = false;
    el.dataset.seconds = left.toFixed(1);
    el.textContent = `Next upstream attempt (connection ${next.connection}) in ${Math.ceil(left)} s` + (next.why ? ` — after ${next.why}` : "");
  }
}

// With [consumers] tables /status and /rates need a bearer token: open the page as
// /#token=<token> once; it is kept for this tab only (sessionStorage), never in the URL.
const tokenMatch = /(?:^#|&)token=([^&]+)/.exec(location.hash);
if (tokenMatch) {
  sessionStorage.setItem("lsproxy-token", decodeURIComponent(tokenMatch[1]));
  history.replaceState(null, "", location.pathname);
}

async function getJson(path) {
  const token = sessionStorage.getItem("lsproxy-token");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(path, { cache: "no-store", headers });
  if (r.status === 401 || r.status === 403) {
    throw new Error(`HTTP ${r.status}: open this page as /#token=<your token>`);
  }
  return r.json();
}

async function poll() {
  try {
    const [status, rates] = await Promise.all(["/status", "/rates"].map(getJson));
    const receivedAt = performance.now();
    countdowns = [];
    document.getElementById("version").textContent = `v${status.version}`;
    document.getElementById("uptime").textContent = `up ${Math.floor(status.uptime)} s`;
    const streams = status.streams || {};
    for (const [name, snap] of Object.entries(streams)) {
      renderStream(name, snap, (rates.streams || {})[name], receivedAt);
    }
    for (const [name, section] of sections) {
      if (!(name in streams)) { section.remove(); sections.delete(name); }
    }
    updates += 1;
    document.body.dataset.updates = String(updates);
    document.body.dataset.uptime = String(status.uptime);
    const updated = document.getElementById("updated");
    updated.textContent = `updated ${new Date().toISOString().slice(11, 19)}Z`;
    updated.className = "muted";
    tick();
  } catch (err) {
    const updated = document.getElementById("updated");
    updated.textContent = `proxy unreachable (${err.message}); retrying`;
    updated.className = "lagging";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

setInterval(tick, TICK_MS);
poll();
