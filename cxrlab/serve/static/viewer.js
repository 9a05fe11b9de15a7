// cxrlab viewer: plain JS, no build step. Talks to /v1/* with an optional bearer token.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("cxrlab-token") || "";
const blobUrls = [];

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function setStatus(text, state) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = state;
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  if (resp.status === 401) {
    $("auth").hidden = false;
    throw new Error("access token required (enter it above)");
  }
  if (!resp.ok) {
    let reason = resp.statusText;
    try { reason = (await resp.json()).error.reason; } catch (e) { /* not JSON */ }
    throw new Error(`${resp.status}: ${reason}`);
  }
  return resp;
}

// Result PNGs need the token too, so they are fetched and shown as blob URLs rather than plain <img src>.
async function loadImage(img, path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  blobUrls.push(url);
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = url; });
}

function fmt(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function row(tbody, label, value, fraction) {
  const tr = document.createElement("tr");
  const a = document.createElement("td");
  a.textContent = label;
  const b = document.createElement("td");
  b.textContent = value;
  tr.append(a, b);
  if (fraction !== undefined) {
    const c = document.createElement("td");
    c.className = "bar";
    const bar = document.createElement("div");
    bar.style.width = `${Math.round(100 * Math.max(0, Math.min(1, fraction || 0)))}%`;
    c.append(bar);
    tr.append(c);
  }
  tbody.append(tr);
}

function showFindings(r) {
  const tbody = $("findings").querySelector("tbody");
  tbody.replaceChildren();
  if (r.diagnosis) {
    const probs = Object.entries(r.diagnosis.probabilities).sort((x, y) => y[1] - x[1]);
    for (const [name, p] of probs) row(tbody, name, fmt(p), p);
  }
  if (r.icu) row(tbody, "ICU admission risk", fmt(r.icu.risk), r.icu.risk);
  if (r.heatmap && r.heatmap.concordance !== undefined && r.heatmap.concordance !== null) {
    row(tbody, `heatmap in lungs (${r.heatmap.target})`, fmt(r.heatmap.concordance));
  }
  if (!tbody.children.length) row(tbody, "no classifier configured", "");
}

const ZONES = [["A", 10, 10], ["B", 10, 85], ["C", 10, 160], ["D", 115, 10], ["E", 115, 85], ["F", 115, 160]];
const SVG = "http://www.w3.org/2000/svg";

function showZones(r) {
  const svg = $("zones");
  svg.replaceChildren();
  const zones = (r.severity && r.severity.zones) || {};
  for (const [z, x, y] of ZONES) {
    const score = zones[z] ? zones[z].score : null;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", x); rect.setAttribute("y", y);
    rect.setAttribute("width", 95); rect.setAttribute("height", 70); rect.setAttribute("rx", 8);
    rect.setAttribute("class", score === null || score === undefined ? "zna" : `z${Math.round(score)}`);
    rect.dataset.zone = z;
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", x + 47); text.setAttribute("y", y + 42);
    text.textContent = `${z} ${score === null || score === undefined ? "–" : score}`;
    svg.append(rect, text);
  }
  const cap = document.createElementNS(SVG, "text");
  cap.setAttribute("x", 110); cap.setAttribute("y", 246); cap.setAttribute("class", "caption");
  cap.textContent = "patient right | patient left";
  svg.append(cap);
  const tbody = $("severity").querySelector("tbody");
  tbody.replaceChildren();
  if (!r.severity) { row(tbody, "no opacity model configured", ""); return; }
  for (const side of ["patient_right", "patient_left"]) {
    const lung = r.severity.per_lung[side] || {};
    row(tbody, `${side.replace("_", " ")} lung grade (0-3)`, fmt(lung.grade, 0), lung.involvement);
  }
  for (const [name, value] of Object.entries(r.severity.totals || {})) {
    // involvement is a fraction of the lungs; the other totals are integer scores
    row(tbody, name.replace(/_/g, " "), fmt(value, name.startsWith("involvement") ? 2 : 0));
  }
}

function showQuality(r) {
  const ul = $("quality");
  ul.replaceChildren();
  const q = r.quality || {};
  const items = [
    ["lung masks plausible", q.lung_masks_plausible, false],
    ["lateral view", q.lateral_view, true],
    ["inverted grey levels", q.inverted, true],
  ];
  for (const [label, value, badWhenTrue] of items) {
    const li = document.createElement("li");
    li.textContent = `${label}: ${value === null || value === undefined ? "not checked" : value ? "yes" : "no"}`;
    if (value !== null && value !== undefined && value === badWhenTrue) li.className = "warn";
    ul.append(li);
  }
  if (q.verdict) {
    const li = document.createElement("li");
    li.textContent = `quality gate: ${q.verdict}`;
    if (q.verdict !== "ok") li.className = "warn";
    ul.append(li);
  } else if (q.gate) {
    const li = document.createElement("li");
    li.textContent = `quality gate: ${q.gate}`;
    ul.append(li);
  }
  for (const note of q.notes || []) {
    const li = document.createElement("li");
    li.className = "warn";
    li.textContent = note;
    ul.append(li);
  }
  $("meta").textContent = JSON.stringify({ timings_ms: r.timings_ms, models: r.models, backend: r.backend }, null, 2);
}

function showContours(r) {
  const svg = $("contours");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${r.image.display_width} ${r.image.display_height}`);
  for (const [side, polys] of Object.entries(r.contours || {})) {
    for (const poly of polys) {
      const p = document.createElementNS(SVG, "polygon");
      p.setAttribute("points", poly.map(([x, y]) => `${x},${y}`).join(" "));
      p.setAttribute("class", side);
      svg.append(p);
    }
  }
}

function applyHeatmapControls() {
  const heat = $("heat");
  heat.style.display = $("heat-toggle").checked && heat.dataset.available === "1" ? "block" : "none";
  heat.style.opacity = $("heat-opacity").value / 100;
  $("contours").style.display = $("contour-toggle").checked ? "block" : "none";
}

// --- similar cases (POST /v1/similar; shown only when the service has a case index) ---
let similarEnabled = false;
let similarGeneration = 0; // a newer upload makes an older similar-case answer stale

function clearSimilar() {
  similarGeneration += 1;
  const panel = $("similar");
  panel.hidden = true;
  panel.dataset.state = "idle";
  $("similar-list").replaceChildren();
  $("similar-status").textContent = "";
}

function timeline(series, bestImage) {
  const p = document.createElement("p");
  p.className = "timeline";
  p.append("films (day): ");
  for (const film of series || []) {
    const span = document.createElement("span");
    span.textContent = film.offset_days === null || film.offset_days === undefined ? "?" : `${film.offset_days}`;
    span.title = film.image;
    if (film.image === bestImage) span.className = "best";
    p.append(span);
  }
  return p;
}

async function similarCard(hit) {
  const li = document.createElement("li");
  li.dataset.patient = hit.patient_id;
  const img = document.createElement("img");
  img.alt = `most similar film of patient ${hit.patient_id}`;
  li.append(img);
  const head = document.createElement("div");
  const sim = document.createElement("span");
  sim.className = "sim";
  sim.textContent = `similarity ${fmt(hit.similarity)}`;
  head.append(sim, ` · ${hit.finding || "finding not recorded"}`);
  const who = document.createElement("div");
  who.textContent = `patient ${hit.patient_id}`;
  li.append(head, who);
  const outcomes = Object.entries(hit.outcomes || {});
  if (outcomes.length) {
    const p = document.createElement("p");
    p.className = "outcomes";
    p.textContent = "recorded: " + outcomes.map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(", ");
    li.append(p);
  }
  li.append(timeline(hit.series, hit.image));
  if (hit.thumbnail) {
    try { await loadImage(img, hit.thumbnail); } catch (e) { img.alt = "thumbnail not available"; }
  }
  return li;
}

async function showSimilar(file, generation) {
  if (!similarEnabled || generation !== similarGeneration) return; // not configured, or a newer upload started
  const panel = $("similar");
  panel.hidden = false;
  panel.dataset.state = "busy";
  $("similar-status").textContent = "Searching the case index…";
  try {
    const form = new FormData();
    form.append("file", file);
    const r = await (await api("/v1/similar", { method: "POST", body: form })).json();
    const cards = await Promise.all(r.results.map(similarCard));
    if (generation !== similarGeneration) return; // a newer upload started meanwhile
    $("similar-list").replaceChildren(...cards);
    $("similar-status").textContent = cards.length ? `${cards.length} most similar patients.` : "No similar patients.";
    panel.dataset.state = "done";
  } catch (err) {
    if (generation !== similarGeneration) return;
    $("similar-list").replaceChildren();
    $("similar-status").textContent = `Similar cases unavailable: ${err.message}`;
    panel.dataset.state = "error";
  }
}

function clearResults() {
  // a new upload (or its refusal) must never leave the previous film's findings and scores on screen
  clearSimilar();
  $("viewer").hidden = true;
  for (const id of ["findings", "severity"]) $(id).querySelector("tbody").replaceChildren();
  $("zones").replaceChildren();
  $("quality").replaceChildren();
  $("meta").textContent = "";
  delete document.body.dataset.resultId;
}

async function analyze(file) {
  clearResults();
  const generation = similarGeneration;
  setStatus("Analysing…", "busy");
  while (blobUrls.length) URL.revokeObjectURL(blobUrls.pop());
  try {
    const form = new FormData();
    form.append("file", file);
    const r = await (await api("/v1/analyze", { method: "POST", body: form })).json();
    await loadImage($("base"), r.links.image);
    const heat = $("heat");
    heat.dataset.available = r.links.heatmap ? "1" : "0";
    if (r.links.heatmap) await loadImage(heat, r.links.heatmap);
    $("overlay-link").onclick = async (ev) => {
      ev.preventDefault();
      const blob = await (await api(r.links.overlay)).blob();
      window.open(URL.createObjectURL(blob), "_blank");
    };
    showContours(r);
    showFindings(r);
    showZones(r);
    showQuality(r);
    $("viewer").hidden = false;
    applyHeatmapControls();
    document.body.dataset.resultId = r.id;
    setStatus(`Done in ${Math.round(r.timings_ms.total)} ms (result kept temporarily).`, "done");
  } catch (err) {
    clearResults();
    setStatus(`Error: ${err.message}`, "error");
    return;
  }
  await showSimilar(file, generation);
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => { if (ev.target.files.length) analyze(ev.target.files[0]); });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) analyze(ev.dataTransfer.files[0]);
  });
  $("token").value = token;
  $("token").addEventListener("change", (ev) => {
    token = ev.target.value.trim();
    sessionStorage.setItem("cxrlab-token", token);
  });
  for (const id of ["heat-toggle", "heat-opacity", "contour-toggle"]) $(id).addEventListener("input", applyHeatmapControls);
  fetch("/v1/health").then((r) => r.json()).then((h) => {
    if (h.auth_required) $("auth").hidden = false;
    similarEnabled = Boolean(h.similar);
    setStatus(`Ready. Stages: ${h.stages.join(", ") || "none"}; backend ${h.backend}.`, "idle");
  }).catch(() => setStatus("Service not reachable.", "error"));
}

init();
