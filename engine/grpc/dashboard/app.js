// Switchyard dashboard: reads /api/* (the session cookie authenticates), follows /api/live
// (server-sent events) and redraws only what changed. Money arrives as decimal strings and
// is only ever formatted as text here, never turned into a floating-point number.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = {
  me: null,
  period: "day",
  workflows: [],
  rows: new Map(), // instance id → row, for the panel
  chart: null,
  refreshTimer: null,
  source: null,
};

// ---- helpers ----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

/** "14228.46" → "14,228.46": groups the integer part and keeps the places given. */
function money(text) {
  if (text === null || text === undefined) return "—";
  const s = String(text);
  const negative = s.startsWith("-");
  const [whole, fraction] = (negative ? s.slice(1) : s).split(".");
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return (negative ? "−" : "") + grouped + (fraction !== undefined ? "." + fraction : "");
}

function percent(value) {
  // Two decimals, as the analytics API gives them (the projection writes 0 as "0").
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(2)} %`;
}

function isoDate(date) {
  return date.toISOString().slice(0, 10);
}

function addDays(iso, days) {
  const d = new Date(iso + "T00:00:00Z");
  d.setUTCDate(d.getUTCDate() + days);
  return isoDate(d);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

function seconds(duration) {
  if (!duration) return "—";
  const s = duration.secs || 0;
  if (s >= 86400) return `${(s / 86400).toFixed(1)} d`;
  if (s >= 3600) return `${(s / 3600).toFixed(1)} h`;
  if (s >= 60) return `${Math.round(s / 60)} min`;
  return `${s} s`;
}

const FAILED_STATES = ["lost", "declined", "rejected", "refused", "cancelled", "expired", "undelivered"];

/** The badge class of a state: colour adds to the written state and its symbol. */
function stateClass(row) {
  if (row.status === "cancelled") return "ended";
  if (FAILED_STATES.includes(row.state)) return "failed";
  if (row.status === "completed") return "done";
  if (/pending|waiting|review|needs|inquiry|submitted/.test(row.state)) return "waiting";
  return "active";
}

function stateBadge(row) {
  const kind = stateClass(row);
  return el("span", {
    class: `badge ${kind}`,
    "data-state": row.state,
    title: `${row.state} (${row.status})`,
    text: row.state.replaceAll("_", " "),
  });
}

function setLive(status, text) {
  const live = $("#live");
  live.dataset.state = status;
  live.textContent = text;
}

// ---- summary ----------------------------------------------------------------------------

const TILES = [
  ["leads", "Leads", (s) => s.counts.leads],
  ["quotes", "Quotes", (s) => s.counts.quotes],
  ["orders", "Orders", (s) => s.counts.orders],
  ["returns", "Returns", (s) => s.counts.returns],
  ["refunds", "Refunds", (s) => s.counts.refunds],
  ["chargebacks", "Chargebacks", (s) => s.counts.chargebacks],
  ["quote_to_order", "Quote → order", (s) => percent(s.funnel.quote_to_order_pct)],
  ["lead_to_order", "Lead → order", (s) => percent(s.funnel.lead_to_order_pct)],
  ["backorders", "Backorders open", (s) => s.backorders_open],
];

function renderSummary(summary) {
  $("#today").textContent = `${summary.from} (${summary.time_zone})`;
  const tiles = $("#tiles");
  if (!tiles.children.length) {
    for (const [key, label] of TILES) {
      tiles.append(
        el("div", { class: "tile", "data-figure": key },
          el("div", { class: "label", text: label }),
          el("div", { class: "value", text: "—" })));
    }
  }
  for (const [key, , pick] of TILES) {
    const tile = tiles.querySelector(`[data-figure="${key}"]`);
    const value = String(pick(summary));
    const cell = tile.querySelector(".value");
    if (cell.textContent !== value) {
      cell.textContent = value;
      tile.dataset.value = value;
      tile.classList.remove("flash");
      void tile.offsetWidth;
      tile.classList.add("flash");
    }
  }
  const body = $("#money tbody");
  body.replaceChildren();
  const currencies = Object.keys(summary.revenue);
  if (!currencies.length) {
    body.append(el("tr", {}, el("td", { colspan: "7", class: "muted", text: "No money moved today yet." })));
  }
  for (const currency of currencies) {
    const r = summary.revenue[currency];
    const cell = (field, value) =>
      el("td", { "data-currency": currency, "data-field": field, "data-value": value, text: money(value) });
    body.append(el("tr", {},
      el("th", { scope: "row", text: currency }),
      cell("ordered", r.ordered), cell("invoiced", r.invoiced), cell("paid", r.paid),
      cell("refunded", r.refunded), cell("chargebacks_lost", r.chargebacks_lost),
      cell("net", summary.net[currency])));
  }
}

async function loadSummary() {
  const today = state.me.today;
  renderSummary(await api(`/api/summary?from=${today}&to=${today}`));
}

// ---- alerts and top performers ------------------------------------------------------------

async function loadAlerts() {
  const { alerts, total } = await api("/api/alerts?limit=20");
  $("#alerts-total").textContent = total > alerts.length ? `${alerts.length} of ${total}` : `${total}`;
  const list = $("#alerts");
  list.replaceChildren();
  if (!alerts.length) list.append(el("li", { class: "muted", text: "Nothing needs attention." }));
  for (const a of alerts) {
    const due = a.due ? ` · due ${when(a.due)}` : "";
    list.append(el("li", { "data-kind": a.kind, "data-severity": a.severity },
      el("span", { class: `badge sev-${a.severity}`, text: a.severity }),
      el("span", {},
        el("strong", { text: a.kind.replaceAll("_", " ") }), " · ",
        el("button", { class: "link", type: "button", text: a.business_key || a.instance,
          onclick: () => openInstance(a.instance) }),
        ` (${a.definition})${due}`),
      el("span", { class: "detail", text: a.detail })));
  }
}

async function loadTop() {
  const dimension = $("#top-dimension").value;
  const to = state.me.today;
  const from = addDays(to, -29);
  const performers = await api(`/api/top?dimension=${dimension}&from=${from}&to=${to}&limit=5`);
  const list = $("#top");
  list.replaceChildren();
  if (!performers.length) list.append(el("li", { class: "muted", text: "No orders in the last 30 days." }));
  for (const p of performers) {
    const amounts = Object.entries(p.amounts).map(([c, v]) => `${c} ${money(v)}`).join(", ");
    const unit = dimension === "workflow" ? "started" : "orders";
    list.append(el("li", { "data-name": p.name },
      el("strong", { text: p.name }), ` — ${p.count} ${unit}`,
      amounts ? el("div", { class: "amounts", text: amounts }) : null));
  }
}

// ---- the chart ----------------------------------------------------------------------------

async function loadSeries() {
  const from = $("#from").value;
  const to = $("#to").value;
  const points = await api(`/api/series?period=${state.period}&from=${from}&to=${to}`);
  const labels = points.map((p) => p.label);
  const pick = (f) => points.map((p) => p.counts[f]);
  // Chart.js draws numbers; a percentage with two places is exact enough for a line.
  const conversion = points.map((p) =>
    p.funnel.quote_to_order_pct === null ? null : Number(p.funnel.quote_to_order_pct));
  const data = {
    labels,
    datasets: [
      { type: "bar", label: "Orders", data: pick("orders"), backgroundColor: "#0b5cad", stack: "docs", yAxisID: "y", order: 1 },
      { type: "bar", label: "Returns", data: pick("returns"), backgroundColor: "#c27c0e", stack: "docs", yAxisID: "y", order: 1 },
      { type: "bar", label: "Chargebacks", data: pick("chargebacks"), backgroundColor: "#b3261e", stack: "docs", yAxisID: "y", order: 1 },
      { type: "line", label: "Quote → order %", data: conversion, borderColor: "#14532d", backgroundColor: "#14532d",
        borderDash: [6, 4], spanGaps: true, yAxisID: "pct", tension: 0.2, pointRadius: 4, pointStyle: "rectRot",
        order: 0 }, // drawn over the bars
    ],
  };
  if (typeof Chart !== "undefined") {
    if (state.chart) {
      state.chart.data = data;
      state.chart.update("none");
    } else {
      state.chart = new Chart($("#chart"), {
        data,
        options: {
          responsive: true, maintainAspectRatio: false, animation: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            x: { stacked: true },
            y: { stacked: true, beginAtZero: true, title: { display: true, text: "documents" }, ticks: { precision: 0 } },
            pct: { position: "right", min: 0, max: 100, grid: { drawOnChartArea: false }, title: { display: true, text: "%" } },
          },
        },
      });
    }
  }
  const body = $("#series tbody");
  body.replaceChildren();
  for (const p of points) {
    body.append(el("tr", { "data-period": p.label },
      el("th", { scope: "row", text: p.label }),
      el("td", { text: String(p.counts.orders) }),
      el("td", { text: String(p.counts.returns) }),
      el("td", { text: String(p.counts.chargebacks) }),
      el("td", { text: percent(p.funnel.quote_to_order_pct) })));
  }
}

function setPeriod(period) {
  state.period = period;
  $("#period-day").setAttribute("aria-pressed", String(period === "day"));
  $("#period-week").setAttribute("aria-pressed", String(period === "week"));
  const to = $("#to").value || state.me.today;
  // Two weeks of days, or twelve whole ISO weeks (from a Monday).
  const weekday = (new Date(`${to}T00:00:00Z`).getUTCDay() + 6) % 7;
  $("#from").value = period === "day" ? addDays(to, -13) : addDays(to, -weekday - 7 * 11);
  loadSeries().catch(showError);
}

// ---- the workflow panel -------------------------------------------------------------------

function filters() {
  return { workflow: $("#filter-workflow").value, state: $("#filter-state").value, q: $("#search").value.trim() };
}

function matches(row, f) {
  return (!f.workflow || row.definition === f.workflow) &&
    (!f.state || row.state === f.state) &&
    (!f.q || [row.business_key, row.number || ""].some((k) => k.toLowerCase().includes(f.q.toLowerCase())));
}

function rowElement(row) {
  return el("tr", { "data-id": row.id, "data-definition": row.definition, "data-state": row.state },
    el("td", {}, el("button", { class: "link", type: "button", text: row.number || row.business_key || row.id,
      title: row.number ? `${row.number} · ${row.business_key}` : row.business_key,
      "aria-label": `Open ${row.number || row.business_key || row.id}`, onclick: () => openInstance(row.id) })),
    el("td", { text: row.definition }),
    el("td", {}, stateBadge(row)),
    el("td", { text: row.change ? row.change.replaceAll("_", " ") : "—" }),
    el("td", { text: when(row.at) }));
}

function renderRows() {
  const f = filters();
  const body = $("#instances tbody");
  const rows = [...state.rows.values()].filter((r) => matches(r, f));
  rows.sort((a, b) => (b.offset || 0) - (a.offset || 0));
  body.replaceChildren(...rows.slice(0, 200).map(rowElement));
  $("#instances-empty").hidden = rows.length > 0;
}

async function loadInstances() {
  const f = filters();
  const query = new URLSearchParams({ workflow: f.workflow, state: f.state, q: f.q, limit: "100" });
  const { instances } = await api(`/api/instances?${query}`);
  state.rows = new Map(instances.map((r) => [r.id, r]));
  renderRows();
}

function fillStates() {
  const select = $("#filter-state");
  const chosen = $("#filter-workflow").value;
  const states = new Set();
  for (const w of state.workflows) {
    if (!chosen || w.name === chosen) w.states.forEach((s) => states.add(s.name));
  }
  select.replaceChildren(el("option", { value: "", text: "all" }),
    ...[...states].sort().map((s) => el("option", { value: s, text: s.replaceAll("_", " ") })));
}

async function loadWorkflows() {
  state.workflows = await api("/api/workflows");
  $("#filter-workflow").replaceChildren(el("option", { value: "", text: "all" }),
    ...state.workflows.map((w) => el("option", { value: w.name, text: w.name.replaceAll("_", " ") })));
  fillStates();
}

// ---- drill-down ---------------------------------------------------------------------------

async function openInstance(id) {
  const dialog = $("#drill");
  const { instance, history } = await api(`/api/instances/${encodeURIComponent(id)}`);
  $("#drill-title").textContent = `${instance.definition.name} ${instance.business_key}`;
  const facts = $("#drill-facts");
  facts.replaceChildren();
  const fact = (term, value) => facts.append(el("dt", { text: term }), el("dd", {}, value));
  fact("State", stateBadge(instance));
  fact("Status", instance.status);
  fact("Owner", instance.owner || "—");
  fact("Version", String(instance.version));
  fact("Instance", instance.id);
  if (instance.parent) {
    fact("Started by", el("button", { class: "link", type: "button", text: instance.parent,
      onclick: () => openInstance(instance.parent) }));
  }
  const list = $("#drill-history");
  list.replaceChildren();
  for (const h of history) {
    const move = h.from_state ? `${h.from_state} → ${h.to_state}` : `started in ${h.to_state}`;
    const kind = String((h.kind && h.kind.type) || "change");
    const what = h.command ? `${h.command}: ` : `${kind.replaceAll("_", " ")}: `;
    const rule = h.provenance
      ? `rule ${h.provenance.script}::${h.provenance.function}, rule set ${h.provenance.rule_set}` +
        (h.provenance.reference_data ? `, reference data ${h.provenance.reference_data}` : "")
      : h.decider ? `decided by ${h.decider}` : null;
    list.append(el("li", { "data-version": String(h.version) },
      el("div", { class: "move", text: what + move }),
      el("div", { class: "reason", text: h.reason || "" }),
      el("div", { class: "meta", text: `${when(h.at)} · ${h.actor.id} (${h.actor.roles.join(", ") || "no role"})` }),
      rule ? el("div", { class: "rule", text: rule }) : null));
  }
  if (!dialog.open) dialog.showModal();
  $("#drill-close").focus();
}

// ---- live updates -------------------------------------------------------------------------

/** Alerts, top performers and the chart follow a change within two seconds. */
function refreshSoon() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    Promise.all([loadAlerts(), loadTop(), loadSeries()]).catch(showError);
  }, 2000);
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/api/live");
  state.source = source;
  source.addEventListener("open", () => setLive("live", "Live"));
  source.addEventListener("summary", (e) => {
    const summary = JSON.parse(e.data);
    if (summary.from === state.me.today) renderSummary(summary);
    else reloadAll();
    refreshSoon();
  });
  source.addEventListener("instances", (e) => {
    const { instances } = JSON.parse(e.data);
    for (const row of instances) state.rows.set(row.id, row);
    if (state.rows.size > 1000) {
      const oldest = [...state.rows.values()].sort((a, b) => (a.offset || 0) - (b.offset || 0));
      for (const r of oldest.slice(0, state.rows.size - 1000)) state.rows.delete(r.id);
    }
    renderRows();
    refreshSoon();
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (a session that ended, the server gone): find out which, then try again.
      setLive("offline", "Offline — retrying");
      setTimeout(() => api("/api/me").then(() => { connect(); reloadAll(); }).catch(() => setTimeout(connect, 3000)), 2000);
    } else {
      setLive("reconnecting", "Reconnecting…");
    }
  });
}

function showError(error) {
  console.error(error);
}

async function reloadAll() {
  state.me = await api("/api/me");
  await Promise.all([loadSummary(), loadAlerts(), loadTop(), loadSeries(), loadInstances()]);
}

async function start() {
  state.me = await api("/api/me");
  $("#who").textContent = `${state.me.actor} · ${state.me.roles.join(", ")} · ${
    state.me.reads === "own" ? "your own figures" : "all figures"}`;
  $("#to").value = state.me.today;
  $("#from").value = addDays(state.me.today, -13);
  await loadWorkflows();
  await Promise.all([loadSummary(), loadAlerts(), loadTop(), loadSeries(), loadInstances()]);
  document.body.dataset.ready = "true";
  connect();
}

$("#period-day").addEventListener("click", () => setPeriod("day"));
$("#period-week").addEventListener("click", () => setPeriod("week"));
$("#from").addEventListener("change", () => loadSeries().catch(showError));
$("#to").addEventListener("change", () => loadSeries().catch(showError));
$("#top-dimension").addEventListener("change", () => loadTop().catch(showError));
$("#filter-workflow").addEventListener("change", () => { fillStates(); loadInstances().catch(showError); });
$("#filter-state").addEventListener("change", () => loadInstances().catch(showError));
let searchTimer = null;
$("#search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadInstances().catch(showError), 250);
});
$("#drill-close").addEventListener("click", () => $("#drill").close());

start().catch((e) => {
  showError(e);
  setLive("offline", "Could not load");
});
