// Portcullis dashboard: reads /api/routes, /api/reloads, /api/traffic and posts to
// /api/explain. Plain DOM, no dependencies; text is only ever set as text.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const COLORS = { "1xx": "#8e8e8e", "2xx": "#2e9d5b", "3xx": "#3b7dd8", "4xx": "#e08a1e", "5xx": "#d03b3b" };
const state = { generation: null, routes: [], classes: {} };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

async function getJSON(path, init) {
  const r = await fetch(path, Object.assign({ cache: "no-store" }, init || {}));
  const j = await r.json().catch(() => ({ error: r.status + " " + r.statusText }));
  if (!r.ok && !j.error) j.error = r.status + " " + r.statusText;
  return j;
}

function stateBadge(s) {
  const cls = s === "open" ? "open" : s === "closed" ? "closed" : "guarded";
  return el("span", { class: "state " + cls, text: s });
}

function matchText(r) {
  if (r.expression) return [el("code", { text: r.expression })];
  const parts = [];
  if (r.methods.length) parts.push(r.methods.join(","));
  if (r.hosts.length) parts.push(r.hosts.join(","));
  if (r.paths.length) parts.push(r.paths.join(" "));
  if (r.headers.length) parts.push("headers: " + r.headers.join(","));
  return [el("code", { text: parts.join("  ") || "(any)" })];
}

function pluginChip(p) {
  const cls = "plugin" + (p.guard ? " guard" : "") + (p.guard === "closed" ? " closed" : "");
  const details = [];
  const c = p.config || {};
  if (p.name === "request-termination") details.push(c.status + (c.message ? " " + JSON.stringify(c.message) : "") + (c.trigger ? " if " + c.trigger : ""));
  if (p.name === "ip-restriction") {
    const list = (l, n) => (l.length ? l.join(" ") : "none") + (l.length >= 20 ? ` … (${n} merged ranges)` : "");
    details.push("allow " + list(c.allow, c.allow_ranges), "deny " + list(c.deny, c.deny_ranges));
  }
  if (p.name === "acl") details.push(c.mode + " " + (c.groups || []).join(","));
  if (p.name === "key-auth") details.push((c.key_names || []).join(","));
  if (p.name === "oauth2-resource") details.push(c.issuer);
  if (p.name === "rate-limiting") details.push(c.limits);
  if (p.consumer) details.push("consumer " + p.consumer);
  const chip = el("span", { class: cls, title: p.scope + " plugin, priority " + p.priority + (details.length ? "\n" + details.join("\n") : "") },
    p.name, el("span", { class: "at", text: p.at.replace(/^.*\//, "") }),
    p.guard && details.length ? el("span", { class: "detail", text: details.join("; ") }) : null);
  const out = [chip];
  if (c.access && c.access.length) {
    for (const src of c.access) out.push(el("pre", { class: "lua", text: src }));
  }
  return out;
}

// One route's last minute: a line per status class that had requests.
function sparkline(classes) {
  const w = 90, h = 22;
  const s = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" });
  if (!classes) return s;
  const series = CLASSES.map((c) => [c, (classes[c] || []).slice(-60)]).filter(([, v]) => v.some((x) => x > 0));
  const max = Math.max(1, ...series.flatMap(([, v]) => v));
  for (const [c, pts] of series) {
    const step = pts.length > 1 ? w / (pts.length - 1) : w;
    const d = pts.map((v, i) => `${(i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { points: d, fill: "none", stroke: COLORS[c], "stroke-width": "1.3", "class": "spark-" + c }));
  }
  return s;
}

function renderRoutes(doc) {
  state.routes = doc.routes;
  document.getElementById("config").textContent =
    `${doc.config_file} · generation ${doc.generation} · sha256 ${doc.config_hash.slice(0, 12)}`;
  document.body.dataset.generation = doc.generation;
  document.getElementById("routes-count").textContent = `${doc.routes.length} routes`;
  const mcp = document.getElementById("mcp");
  mcp.replaceChildren();
  for (const m of doc.mcp) mcp.append(el("span", { class: "mcp-state", "data-route": m.route }, "MCP " + (m.paths[0] || m.route) + ":", stateBadge(m.state)));
  if (!doc.mcp.length) mcp.append(el("span", { class: "muted", text: "no /mcp route" }));
  const filter = document.getElementById("routes-filter").value.toLowerCase();
  const tbody = document.querySelector("#routes tbody");
  tbody.replaceChildren();
  for (const r of doc.routes) {
    const hay = [r.name, r.paths.join(" "), r.service ? r.service.name : "", r.chain.map((p) => p.name).join(" ")].join(" ").toLowerCase();
    if (filter && !hay.includes(filter)) continue;
    const cls = [r.state === "closed" ? "closed" : r.deny_by_default ? "deny" : "", r.mcp ? "mcp" : ""].join(" ").trim();
    tbody.append(el("tr", { "data-route": r.name, class: cls || null },
      el("td", {}, el("strong", { text: r.name }), el("div", { class: "muted mono", text: r.at.replace(/^.*\//, "") })),
      el("td", {}, matchText(r)),
      el("td", {}, r.service ? [r.service.name, el("div", { class: "muted mono", text: r.service.url })] : el("span", { class: "muted", text: "none (503)" })),
      el("td", {}, r.chain.length ? r.chain.map(pluginChip) : el("span", { class: "muted", text: "none" })),
      el("td", {}, stateBadge(r.state)),
      el("td", { class: "rps", "data-route": r.name }, sparkline(state.classes[r.name]))));
  }
  const g = document.getElementById("global-plugins");
  g.replaceChildren(...(doc.global_plugins.length ? doc.global_plugins.map(pluginChip).flat() : [el("span", { class: "muted", text: "none" })]));
  const cs = document.getElementById("consumers");
  cs.replaceChildren(...doc.consumers.map((c) => el("span", { class: "plugin", title: `${c.key_auth_credentials} key-auth, ${c.basic_auth_credentials} basic-auth credential(s)` },
    c.name + (c.groups.length ? " [" + c.groups.join(",") + "]" : ""))));
  if (!doc.consumers.length) cs.append(el("span", { class: "muted", text: "none" }));
}

function renderReloads(doc) {
  const c = doc.current;
  document.getElementById("current").replaceChildren(
    el("div", {}, "Serving ", el("code", { text: c.config_file }), ` generation ${c.generation}, sha256 `, el("code", { text: c.hash.slice(0, 16) }), ` since ${c.loaded_at}`),
    doc.last_error ? el("div", { class: "errors", text: "last reload rejected; the previous config keeps serving" }) : "");
  const tbody = document.querySelector("#reloads tbody");
  tbody.replaceChildren();
  for (const h of doc.history) {
    tbody.append(el("tr", { class: h.ok ? null : "failed" },
      el("td", { class: "mono", text: h.at.replace("T", " ").replace("Z", "") }),
      el("td", { text: h.outcome }),
      el("td", { text: h.generation }),
      el("td", { class: "mono", text: h.hash.slice(0, 12) }),
      el("td", {}, h.errors.length ? el("ul", { class: "errors" }, h.errors.map((e) => el("li", { text: e }))) : el("span", { class: "muted", text: "ok" }))));
  }
  if (doc.current.generation !== state.generation) {
    state.generation = doc.current.generation;
    return true;
  }
  return false;
}

function renderTraffic(doc) {
  const chart = document.getElementById("traffic-chart");
  const n = doc.times.length;
  const W = 600, H = 120;
  const stacks = CLASSES.map(() => new Array(n).fill(0));
  state.classes = {};
  for (const r of doc.routes) {
    state.classes[r.route || "(no route)"] = r.classes;
    CLASSES.forEach((c, ci) => r.classes[c].forEach((v, i) => { stacks[ci][i] += v; }));
  }
  const totals = new Array(n).fill(0).map((_, i) => stacks.reduce((a, s) => a + s[i], 0));
  const max = Math.max(1, ...totals);
  chart.replaceChildren();
  // At least a minute wide, so a fresh gateway's first seconds are not a sliver.
  const slots = Math.max(60, n);
  const step = W / slots;
  const x0 = W - n * step;
  const base = new Array(n).fill(0);
  for (const ci of [1, 2, 3, 4, 0]) {
    const top = base.map((b, i) => b + stacks[ci][i]);
    if (top.some((v, i) => v > base[i])) {
      const up = top.map((v, i) => `${(x0 + (i + 1) * step).toFixed(1)},${(H - (v / max) * (H - 4)).toFixed(1)}`);
      const down = base.map((v, i) => `${(x0 + (i + 1) * step).toFixed(1)},${(H - (v / max) * (H - 4)).toFixed(1)}`).reverse();
      chart.append(svg("polygon", { points: up.concat(down).join(" "), fill: COLORS[CLASSES[ci]], "class": "area-" + CLASSES[ci] }));
    }
    top.forEach((v, i) => { base[i] = v; });
  }
  const sum = totals.reduce((a, b) => a + b, 0);
  chart.dataset.total = sum.toFixed(2);
  chart.dataset.max = max.toFixed(2);
  const label = svg("text", { x: 4, y: 12, "font-size": 10, fill: "#69737d" });
  label.textContent = `max ${max.toFixed(1)} rps`;
  chart.append(label);
  const now = totals.length ? totals[totals.length - 1] : 0;
  document.getElementById("traffic-now").textContent = `now ${now.toFixed(1)} rps across ${doc.routes.length} route(s)`;
  for (const td of document.querySelectorAll("td.rps")) td.replaceChildren(sparkline(state.classes[td.dataset.route]));
  const tbody = document.querySelector("#latency tbody");
  tbody.replaceChildren();
  for (const s of doc.services) {
    const f = (v) => (v === null || v === undefined ? "–" : v.toFixed(1));
    tbody.append(el("tr", { "data-service": s.service },
      el("td", { text: s.service }), el("td", { text: s.window.count }),
      el("td", { text: f(s.window.p50_ms) }), el("td", { text: f(s.window.p90_ms) }), el("td", { text: f(s.window.p99_ms) }),
      el("td", { text: `${f(s.since_start.p50_ms)} / ${f(s.since_start.p99_ms)} (${s.since_start.count})` })));
  }
  if (!doc.services.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "no upstream requests yet" })));
}

async function refreshRoutes() {
  const doc = await getJSON("/api/routes");
  if (!doc.error) renderRoutes(doc);
}

async function tickReloads() {
  const doc = await getJSON("/api/reloads");
  if (!doc.error && renderReloads(doc)) await refreshRoutes();
}

async function tickTraffic() {
  const doc = await getJSON("/api/traffic");
  if (!doc.error) renderTraffic(doc);
}

async function explain(ev) {
  ev.preventDefault();
  const out = document.getElementById("x-verdict");
  out.textContent = "…";
  const doc = await getJSON("/api/explain", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      method: document.getElementById("x-method").value,
      url: document.getElementById("x-url").value,
      headers: document.getElementById("x-headers").value,
      client_ip: document.getElementById("x-ip").value,
      body: document.getElementById("x-body").value,
    }),
  });
  out.textContent = doc.error ? "error: " + doc.error : "verdict: " + doc.verdict;
  document.getElementById("x-text").textContent = doc.text || "";
  out.dataset.done = String(Number(out.dataset.done || 0) + 1);
}

function every(ms, f) {
  const run = async () => {
    try { await f(); } catch (e) { console.error(e); }
    setTimeout(run, ms);
  };
  run();
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("explain-form").addEventListener("submit", explain);
  document.getElementById("routes-filter").addEventListener("input", refreshRoutes);
  try {
    await tickReloads();
    await tickTraffic();
  } finally {
    document.body.dataset.ready = "1";
  }
  every(2000, tickReloads);
  every(1000, tickTraffic);
});
