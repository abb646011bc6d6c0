// keyplane dashboard: renders /api/state snapshots pushed over server-sent events.
"use strict";

const CONTROLS = document.body.dataset.controls === "true";
// The paper's Fig. 4 colours: request blue, key ready orange, relay brown.
const MARKERS = {
  "request": ["circle", "#1f77b4"], "authenticated": ["rect", "#2ca02c"],
  "configuration": ["diamond", "#9467bd"], "operative": ["triangle", "#17becf"],
  "key ready": ["pin", "#ff7f0e"], "relay": ["arrow", "#8c564b"],
  "response": ["roundRect", "#d62728"], "closed": ["emptyCircle", "#7f7f7f"],
  "alarm": ["emptyDiamond", "#e377c2"], "rerouted": ["emptyTriangle", "#bcbd22"],
};
const STATE_COLOUR = { up: "#2e7d32", degraded: "#ef6c00", down: "#c62828", unknown: "#9e9e9e" };

const graph = echarts.init(document.getElementById("graph"));
const skrChart = echarts.init(document.getElementById("skr-chart"));
const qberChart = echarts.init(document.getElementById("qber-chart"));
const timeline = echarts.init(document.getElementById("timeline"));

function fmtRate(bps) {
  if (bps === null || bps === undefined) return "–";
  if (bps >= 1e6) return (bps / 1e6).toFixed(2) + " Mbit/s";
  if (bps >= 1e3) return (bps / 1e3).toFixed(1) + " kbit/s";
  return bps.toFixed(0) + " bit/s";
}
function fmtQber(q) { return q === null || q === undefined ? "–" : (100 * q).toFixed(2) + " %"; }
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderGraph(s) {
  const nodes = s.nodes.map(n => ({ name: n.id, x: n.x, y: n.y, value: n.name,
    symbolSize: 34, label: { show: true } }));
  const links = s.links.map(l => ({ source: l.a, target: l.b, value: l.id,
    lineStyle: { color: l.alarm ? STATE_COLOUR.down : (STATE_COLOUR[l.state] || "#999"),
                 width: l.alarm ? 4 : 2.5, type: l.state === "down" ? "dashed" : "solid" },
    label: { show: true, formatter: fmtRate(l.skr_bps), fontSize: 10 } }));
  graph.setOption({
    tooltip: {},
    series: [{ type: "graph", layout: "none", roam: true, data: nodes, links: links,
               itemStyle: { color: "#1d5fa8" }, edgeLabel: { show: true, fontSize: 10 },
               label: { color: "#fff", fontSize: 11 } }],
  });
  const ul = document.getElementById("nodes");
  ul.replaceChildren(...s.nodes.map(n => el("li", { "data-node": n.id }, n.name)));
}

function renderLinks(s) {
  const body = document.querySelector("#links tbody");
  body.replaceChildren(...s.links.map(l => {
    const tr = el("tr", { "data-link": l.id });
    tr.append(el("td", {}, l.id), el("td", { class: "state state-" + l.state }, l.state),
      el("td", { class: "num skr" }, fmtRate(l.skr_bps)),
      el("td", { class: "num qber" }, fmtQber(l.qber)),
      el("td", { class: "num store" },
         Object.entries(l.store_bits).map(([n, b]) => `${n}: ${(b / 8192).toFixed(1)} KiB`)
           .join(", ") || "–"),
      el("td", { class: "num" }, String(l.sessions)),
      el("td", { class: "alarm" }, l.alarm || ""));
    const ctl = el("td", { class: "ctl" });
    if (CONTROLS) {
      for (const [action, label] of [["cut", "cut"], ["eve", "eavesdrop"], ["restore", "restore"]]) {
        const b = el("button", { "data-action": action, "data-link": l.id }, label);
        b.addEventListener("click", () => control(l.id, action));
        ctl.append(b);
      }
    }
    tr.append(ctl);
    return tr;
  }));
}

function renderSide(s) {
  const alarms = document.getElementById("alarms");
  alarms.replaceChildren(...(s.alarms.length ? s.alarms.map(a =>
    el("li", { "data-link": a.link, "data-kind": a.kind },
       `${a.link}: ${a.kind}${a.qber !== null && a.qber !== undefined ? " (QBER " + fmtQber(a.qber) + ")" : ""}${a.message ? " – " + a.message : ""}`))
    : [el("li", { class: "none" }, "no active alarm")]));
  const body = document.querySelector("#sessions tbody");
  body.replaceChildren(...s.sessions.map(x => {
    const tr = el("tr", { "data-session": x.id });
    tr.append(el("td", {}, x.pair || x.id.slice(0, 8)), el("td", {}, x.path.join(" → ")),
      el("td", {}, x.state), el("td", { class: "num keys" }, String(x.keys)),
      el("td", { class: "num" }, x.keys_per_s.toFixed(1)));
    return tr;
  }));
}

function renderCharts(s) {
  const series = (pick, name) => s.links.map(l => ({ name: l.id, type: "line", showSymbol: false,
    data: l.history.filter(h => h[pick] !== null).map(h => [h[0], h[pick]]) }));
  const base = { tooltip: { trigger: "axis" }, legend: { type: "scroll", bottom: 0 },
    grid: { left: 60, right: 20, top: 10, bottom: 50 }, xAxis: { type: "value", name: "s" },
    animation: false };
  skrChart.setOption({ ...base, yAxis: { type: "value" }, series: series(1, "skr") }, true);
  qberChart.setOption({ ...base, yAxis: { type: "value", axisLabel: {
    formatter: v => (100 * v).toFixed(1) + " %" } }, series: series(2, "qber") }, true);
  const lanes = s.nodes.map(n => n.id);
  const byType = {};
  for (const m of s.timeline) (byType[m.type] = byType[m.type] || []).push([m.t, m.node, m.session]);
  timeline.setOption({
    animation: false, tooltip: { formatter: p => `${p.seriesName} at ${p.value[1]}, t=${p.value[0]} s, session ${p.value[2]}` },
    legend: { bottom: 0 }, grid: { left: 60, right: 20, top: 10, bottom: 50 },
    xAxis: { type: "value", name: "s" }, yAxis: { type: "category", data: lanes, inverse: true },
    series: Object.entries(MARKERS).map(([type, [symbol, colour]]) => ({
      name: type, type: "scatter", symbol: symbol, symbolSize: 9,
      itemStyle: { color: colour }, data: byType[type] || [] })),
  }, true);
}

function render(s) {
  document.getElementById("network").textContent = s.network;
  document.getElementById("clock").textContent = `t = ${s.t.toFixed(1)} s`;
  renderGraph(s); renderLinks(s); renderSide(s); renderCharts(s);
}

async function control(link, action) {
  const msg = document.getElementById("control-msg");
  const q = action === "eve" ? "?fraction=1.0" : "";
  const r = await fetch(`api/links/${encodeURIComponent(link)}/${action}${q}`,
    { method: "POST", headers: { "X-Keyplane-Dashboard": "1" } });
  const body = await r.json().catch(() => ({}));
  msg.textContent = r.ok ? `${action} ${link}: now ${body.state}`
                         : `${action} ${link} failed: ${body.detail || r.status}`;
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("api/stream");
  es.addEventListener("state", ev => { conn.textContent = "live"; conn.className = "conn-ok";
                                      render(JSON.parse(ev.data)); });
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn-bad"; };
}

fetch("api/state").then(r => r.json()).then(render).finally(connect);
window.addEventListener("resize", () => [graph, skrChart, qberChart, timeline].forEach(c => c.resize()));
