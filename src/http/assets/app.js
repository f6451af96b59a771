// Keeps the dashboard live: a Server-Sent Events stream (/api/stream) sends a snapshot
// every two seconds and the page updates in place. Without JavaScript the server-rendered
// page still shows the numbers of the moment it was loaded.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

function text(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function cell(value, className) {
  const td = document.createElement("td");
  td.textContent = text(value);
  if (className) td.className = className;
  return td;
}

function renderCounts(stats) {
  for (const el of $$("[data-count]")) {
    const [window, field] = el.dataset.count.split(".");
    el.textContent = text(stats[window][field]);
  }
  for (const el of $$("[data-stat]")) {
    const value = stats[el.dataset.stat];
    el.textContent = typeof value === "number" ? String(Math.round(value * 10) / 10) : text(value);
  }
}

function renderChart(perMinute) {
  const svg = $("svg.chart");
  if (!svg) return;
  const max = Math.max(1, ...perMinute);
  svg.replaceChildren(...perMinute.map((n, i) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const h = (n / max) * 78;
    rect.setAttribute("x", String(i * 10));
    rect.setAttribute("y", String(80 - h));
    rect.setAttribute("width", "8");
    rect.setAttribute("height", String(h));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${n} alerts, ${perMinute.length - i - 1} min ago`;
    rect.append(title);
    return rect;
  }));
}

function renderWorkers(workers) {
  const body = $("#workers tbody");
  body.replaceChildren(...workers.map((w) => {
    const tr = document.createElement("tr");
    const beat = w.heartbeat_ms_ago === null ? "never" : `${(w.heartbeat_ms_ago / 1000).toFixed(1)} s ago`;
    tr.append(cell(w.name), cell(w.pending, "n"), cell(beat, "n"));
    return tr;
  }));
}

function matches(event) {
  const filter = ($("#filter").value || "").trim().toLowerCase();
  if (!filter) return true;
  return [event.ticker, event.action, event.status, event.id, event.text]
    .some((v) => (v || "").toLowerCase().includes(filter));
}

let lastEvents = [];

// The status, the alert a duplicate repeats (a link that opens it), and why a job is
// dead or retrying.
function statusCell(e) {
  const td = cell(e.status, `status-${e.status}`);
  if (e.duplicate_of) {
    const link = document.createElement("a");
    link.className = "first";
    link.href = `/api/events/${encodeURIComponent(e.duplicate_of)}`;
    link.dataset.open = e.duplicate_of;
    link.textContent = e.duplicate_of.slice(-12);
    td.append(" of ", link);
  }
  if (e.error) {
    const why = document.createElement("div");
    why.className = "why";
    why.textContent = e.error;
    td.append(why);
  }
  // What became of each of its deliveries.
  for (const d of e.deliveries || []) {
    const fate = document.createElement("div");
    fate.className = "fate";
    const status = document.createElement("span");
    status.className = `status-${d.status}`;
    status.textContent = d.status;
    fate.append(`→ ${d.destination}: `, status);
    td.append(fate);
  }
  return td;
}

function renderDestinations(deliveries) {
  const body = $("#destinations tbody");
  body.replaceChildren(...deliveries.stats.destinations.map((d) => {
    const tr = document.createElement("tr");
    const state = d.breaker || "closed";
    const breaker = cell(state, `breaker-${state}`);
    if (d.last_error && state !== "closed") {
      const why = document.createElement("div");
      why.className = "why";
      why.textContent = d.last_error;
      breaker.append(why);
    }
    tr.append(cell(d.name), cell(d.delivered, "n"), cell(d.expired, "n"), cell(d.dead, "n"),
      cell(d.attempts, "n"), breaker);
    return tr;
  }));
  $("[data-delivery=queued]").textContent = deliveries.stats.queued;
  $("[data-delivery=dead_letters]").textContent = deliveries.stats.dead_letters;
  const failing = $("#failing tbody");
  failing.replaceChildren(...deliveries.failing.map((d) => {
    const tr = document.createElement("tr");
    const time = d.received_at ? new Date(d.received_at).toLocaleTimeString() : "–";
    const status = cell(d.status, `status-${d.status}`);
    if (d.last_error) {
      const why = document.createElement("div");
      why.className = "why";
      why.textContent = d.last_error;
      status.append(why);
    }
    const actions = document.createElement("td");
    if (d.status === "dead" || d.status === "expired") {
      for (const [mode, label] of [["as-it-was", "Send as it was"], ["now", "Send now, re-checked"]]) {
        const button = document.createElement("button");
        button.textContent = label;
        button.addEventListener("click", () => redeliver(d.id, mode, button));
        actions.append(button, " ");
      }
    }
    tr.append(cell(time), cell(`${d.route} → ${d.destination}`), cell(d.ticker), status,
      cell(d.attempts, "n"), actions);
    return tr;
  }));
}

async function redeliver(id, mode, button) {
  button.disabled = true;
  const response = await fetch("/api/deliveries/replay", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ids: [id], mode }),
  });
  const body = await response.json().catch(() => ({}));
  $("#delivery-replay-result").textContent = response.ok
    ? `${mode}: replayed ${body.replayed} deliver${body.replayed === 1 ? "y" : "ies"}`
    : `replay failed: ${body.message || response.status}`;
}

function renderEvents(events) {
  lastEvents = events;
  const body = $("#events tbody");
  body.replaceChildren(...events.filter(matches).map((e) => {
    const tr = document.createElement("tr");
    tr.className = "event";
    tr.dataset.id = e.id;
    const time = e.received_at ? new Date(e.received_at).toLocaleTimeString() : "–";
    tr.append(cell(time), cell(e.source, "muted"));
    if (e.text && !e.ticker) {
      // A text alert: the start of its message, where the fields would be.
      const message = cell(e.text, "message");
      message.colSpan = 3;
      tr.append(message);
    } else {
      tr.append(cell(e.ticker), cell(e.action), cell(e.price, "n"));
    }
    tr.append(statusCell(e), cell(e.lag_ms === null ? null : `${e.lag_ms} ms`, "n"));
    tr.addEventListener("click", () => showEvent(e.id));
    return tr;
  }));
}

async function showEvent(id) {
  const panel = $("#detail");
  panel.hidden = false;
  $("#detail-id").textContent = id;
  const response = await fetch(`/api/events/${encodeURIComponent(id)}`, { credentials: "same-origin" });
  const body = await response.json();
  $("#detail-audit").textContent = JSON.stringify(body.audit, null, 2);
  $("#detail-job").textContent = JSON.stringify(body.job, null, 2);
}

function renderDead(letters) {
  const body = $("#dead tbody");
  body.replaceChildren(...letters.map((d) => {
    const tr = document.createElement("tr");
    const button = document.createElement("button");
    button.textContent = "Replay";
    button.dataset.replay = d.id || "";
    button.disabled = !d.id;
    button.addEventListener("click", () => replay(d.id, button));
    const action = document.createElement("td");
    action.append(button);
    tr.append(cell(d.id), cell(d.reason), action);
    return tr;
  }));
}

async function replay(id, button) {
  button.disabled = true;
  const response = await fetch("/api/dead-letters/replay", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ids: [id] }),
  });
  const body = await response.json().catch(() => ({}));
  $("#replay-result").textContent = response.ok
    ? `replayed ${body.replayed} dead letter(s)`
    : `replay failed: ${body.message || response.status}`;
}

function connect() {
  const live = $("#live");
  const source = new EventSource("/api/stream");
  source.addEventListener("snapshot", (message) => {
    const snapshot = JSON.parse(message.data);
    renderCounts(snapshot.stats);
    renderChart(snapshot.stats.per_minute);
    renderWorkers(snapshot.stats.workers);
    renderEvents(snapshot.events);
    renderDead(snapshot.dead_letters);
    renderDestinations(snapshot.deliveries);
    live.classList.add("on");
    live.textContent = `live, ${new Date().toLocaleTimeString()}`;
  });
  source.addEventListener("error", () => {
    live.classList.remove("on");
    live.textContent = "reconnecting…";
  });
}

$("#filter").addEventListener("input", () => renderEvents(lastEvents));
// A duplicate's link opens the alert it repeats, in the page.
$("#events").addEventListener("click", (event) => {
  const link = event.target.closest("a[data-open]");
  if (!link) return;
  event.preventDefault();
  event.stopPropagation();
  showEvent(link.dataset.open);
}, true);
for (const button of $$("[data-replay]")) {
  button.addEventListener("click", () => replay(button.dataset.replay, button));
}
for (const button of $$("[data-redeliver]")) {
  button.addEventListener("click", () => redeliver(button.dataset.redeliver, button.dataset.mode, button));
}
connect();
