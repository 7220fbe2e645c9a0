// The clinician's page of `domainvlm serve`: plain JS over the REST API (no build step, no
// external URL). Every call carries the key from sessionStorage; every error shows the
// problem's `detail` (RFC 9457), never a stack.
"use strict";

const KEY = "domainvlm.key";
const $ = (id) => document.getElementById(id);
const state = {
  adapters: new Map(), study: null, series: null, blobs: [], viewTicket: 0, previews: [],
};

// ---- HTTP ----------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", "Bearer " + key);
  const response = await fetch(path.replace(/^\//, ""), { ...options, headers });
  if (!response.ok) throw await problem(response);
  return response;
}

const getJson = async (path) => (await api(path)).json();

const postJson = async (path, body) => (await api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
})).json();

async function problem(response) {
  let detail = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (typeof body.detail === "string" && body.detail) detail = body.detail;
  } catch (_) { /* not JSON: the status line says enough */ }
  const id = response.headers.get("X-Request-ID");
  if (response.status >= 500 && id) detail += ` (request id ${id})`;
  const error = new Error(detail);
  error.status = response.status;
  return error;
}

function showError(error) {
  $("error-text").textContent = error.message || String(error);
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; }

// Runs `work` with `button` disabled; shows its error, if any.
async function busy(button, work) {
  clearError();
  if (button) button.disabled = true;
  try { return await work(); } catch (error) { showError(error); } finally {
    if (button) button.disabled = false;
  }
}

// ---- small DOM helpers -----------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function facts(list, pairs) {
  list.replaceChildren();
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    list.append(el("dt", { text: term }), el("dd", { text: String(value) }));
  }
}

const describe = (object) => object ? Object.entries(object)
  .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ") : "";

// The numbers of `domainvlm eval`'s metrics.json, one level deep ("vqa accuracy"), by
// category left out: a card line, not a report.
const scores = (metrics) => Object.entries(metrics || {}).flatMap(([k, v]) =>
  typeof v === "number" ? [[k, v]] : v && typeof v === "object" && k !== "by_category"
    ? Object.entries(v).filter(([, x]) => typeof x === "number").map(([j, x]) => [`${k} ${j}`, x])
    : []);

const number = (v) => typeof v === "number" ? +v.toFixed(4) : v;

// "render 80 ms, queue 2 ms, model 410 ms, total 495 ms" from {render_ms, queue_ms, ...}.
const timings = (t) => Object.entries(t || {})
  .map(([k, v]) => `${k.replace(/_ms$/, "")} ${Math.round(v)} ms`).join(", ");

const VIEW_FROM = { adapter: "as the adapter was trained", default: "the default view" };

// A base model by its folder's name (its full path is the server's business) or its hub id.
const baseName = (base) => {
  const source = typeof base === "string" ? base : base && base.source;
  return source && /^[/.~]|\\/.test(source) ? source.split(/[/\\]/).filter(Boolean).pop() : source;
};

// ---- status, key, tabs ------------------------------------------------------------------

async function watchReady() {
  const response = await fetch("health/ready").catch(() => null);
  const body = response ? await response.json().catch(() => ({})) : {};
  if (response && response.ok) {
    $("status").textContent = `ready · base ${baseName(body.base)}`;
    $("status").title = body.base;
    await refresh();
  } else {
    $("status").textContent = body.detail || "the service does not answer; retrying…";
    setTimeout(watchReady, 3000);
  }
}

async function refresh() {
  await busy(null, async () => {
    await Promise.all([loadAdapters(), loadStudies(), loadPacs()]);
  });
}

function tabKeys(event) {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (!step) return;
  const next = tabs[(tabs.indexOf(event.target) + step + tabs.length) % tabs.length];
  selectTab(next);
  next.focus();
}

function selectTab(tab) {
  for (const other of document.querySelectorAll('[role="tab"]')) {
    const chosen = other === tab;
    other.setAttribute("aria-selected", String(chosen));
    other.tabIndex = chosen ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !chosen;
  }
}

// ---- adapters -------------------------------------------------------------------------

async function loadAdapters() {
  const body = await getJson("/v1/adapters");
  const select = $("adapter");
  const kept = select.value;
  state.adapters = new Map(body.adapters.map((card) => [`${card.name}@${card.version}`, card]));
  select.replaceChildren(el("option", { value: "base", text: `base (${baseName(body.base)})` }));
  for (const [ref, card] of state.adapters) {
    select.append(el("option", { value: ref, text: ref }));
  }
  select.value = state.adapters.has(kept) ? kept : "base";
  showCard();
}

function showCard() {
  const card = state.adapters.get($("adapter").value);
  if (!card) { facts($("card"), [["", "The base model alone, no adapter."]]); return; }
  const metrics = scores(card.metrics).map(([k, v]) => `${k} ${number(v)}`).join(", ");
  facts($("card"), [
    ["intended use", card.intended_use || "not stated"], ["metrics", metrics || "none recorded"],
    ["licence", card.licence], ["created", card.created && card.created.slice(0, 10)],
    ["trained on", card.data && `${card.data.records} records`],
  ]);
}

// ---- studies ---------------------------------------------------------------------------

async function loadStudies() {
  const studies = await getJson("/v1/studies");
  if (state.study && !studies.some((s) => s.id === state.study.id)) closeStudy();  // another key
  const list = $("studies");
  list.replaceChildren();
  if (!studies.length) list.append(el("li", { class: "note", text: "none yet" }));
  for (const study of studies) {
    const label = `${study.modality || "?"} · ${study.instances} images · `
      + (study.created || "").slice(0, 16).replace("T", " ");
    const button = el("button", { type: "button", "data-study": study.id,
      "aria-pressed": String(state.study?.id === study.id), text: label,
      onclick: () => busy(button, () => openStudy(study)) });
    list.append(el("li", {}, button));
  }
}

async function loadPacs() {
  // Which PACS the server may fetch from and write to (names only; URLs stay on the server).
  const { pacs } = await getJson("/v1/studies/pacs");
  $("pacs-name").replaceChildren(...pacs.map((name) => el("option", { text: name })));
  $("pacs-form").hidden = $("sr-label").hidden = !pacs.length;
}

async function openStudy(study) {
  state.study = study;
  state.series = null;
  for (const b of $("studies").querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(b.dataset.study === study.id));
  }
  $("study-title").textContent = `${study.modality || ""} study ${study.id.slice(0, 8)}`;
  $("series").replaceChildren(...study.series.map((s, i) => el("option", {
    value: s.uid, text: `${s.description || `series ${i + 1}`} (${s.modality}, ${s.instances} images)` })));
  $("study-none").hidden = true;
  $("study-work").hidden = false;
  $("answer").hidden = true;
  await loadViews();
}

async function loadViews() {
  if (!state.study) return;
  const views = $("views");
  views.setAttribute("aria-busy", "true");
  // No series until the clinician picks one: the server shows the first with a volume.
  const query = new URLSearchParams({ adapter: $("adapter").value });
  if (state.series) query.set("series", state.series);
  const ticket = ++state.viewTicket;  // a later choice of adapter or series wins
  try {
    const body = await getJson(`/v1/studies/${state.study.id}/views?${query}`);
    // <img src> cannot send the key: fetch each PNG and show it from a blob URL.
    const blobs = await Promise.all(body.images.map(async (image) =>
      URL.createObjectURL(await (await api(image.url)).blob())));
    if (ticket !== state.viewTicket) { blobs.forEach((b) => URL.revokeObjectURL(b)); return; }
    state.blobs.forEach((b) => URL.revokeObjectURL(b));
    state.blobs = blobs;
    $("series").value = body.series_uid;
    $("view-from").textContent = `(${describe(body.view) || "default"}; ${
      VIEW_FROM[body.view_from] || body.view_from})`;
    views.replaceChildren(...body.images.map((image, i) => el("figure", {},
      el("img", { src: blobs[i], alt: image.description || `view ${image.index + 1}` }),
      el("figcaption", { text: image.description || `view ${image.index + 1}` }))));
  } finally {
    if (ticket === state.viewTicket) views.setAttribute("aria-busy", "false");
  }
}

function closeStudy() {
  state.study = null;
  $("study-work").hidden = true;
  $("study-none").hidden = false;
}

async function upload(event) {
  event.preventDefault();
  const files = $("upload-files").files;
  if (!files.length) { showError(new Error("choose DICOM files or a .zip first")); return; }
  const form = new FormData();
  for (const file of files) form.append("files", file);
  await busy(event.submitter, async () => {
    const study = await (await api("/v1/studies", { method: "POST", body: form })).json();
    $("upload-form").reset();
    await loadStudies();
    await openStudy(study);
  });
}

async function importPacs(event) {
  event.preventDefault();
  await busy(event.submitter, async () => {
    const study = await postJson("/v1/studies/pacs",
      { pacs: $("pacs-name").value, study_instance_uid: $("pacs-uid").value.trim() });
    await loadStudies();
    await openStudy(study);
  });
}

async function deleteStudy(event) {
  if (!state.study || !confirm("Delete this study from the server?")) return;
  await busy(event.target, async () => {
    await api(`/v1/studies/${state.study.id}`, { method: "DELETE" });
    closeStudy();
    await loadStudies();
  });
}

async function ask(event) {
  event.preventDefault();
  const questions = $("questions").value.split("\n").map((q) => q.trim()).filter(Boolean);
  await busy(event.submitter, async () => {
    const body = await postJson(`/v1/studies/${state.study.id}/ask`, {
      questions, adapter: $("adapter").value, series_uid: $("series").value || null,
      write_sr: !$("sr-label").hidden && $("write-sr").checked,
    });
    $("answers").replaceChildren(...body.answers.map((a) => el("li", {},
      el("span", { class: "question", text: a.question }),
      el("span", { class: "answer", text: a.answer }),
      ...(a.sr_uid ? [el("span", { class: "note", text: `sent to the PACS as SR ${a.sr_uid}` })] : []))));
    facts($("answer-facts"), [
      ["adapter", body.adapter], ["base", baseName(body.base)],
      ["series", body.description], ["view", describe(body.view)], ["timings", timings(body.timings)],
    ]);
    $("answer").hidden = false;
  });
}

// ---- plain images ------------------------------------------------------------------------

function previewImages() {
  state.previews.forEach((b) => URL.revokeObjectURL(b));
  state.previews = [...$("vqa-images").files].map((file) => URL.createObjectURL(file));
  $("vqa-preview").replaceChildren(...state.previews.map((src, i) =>
    el("img", { src, alt: `chosen image ${i + 1}` })));
}

async function askImage(event) {
  event.preventDefault();
  const form = new FormData();
  for (const file of $("vqa-images").files) form.append("image", file);
  form.append("question", $("vqa-question").value);
  form.append("adapter", $("adapter").value);
  await busy(event.submitter, async () => {
    const body = await (await api("/v1/vqa", { method: "POST", body: form })).json();
    $("vqa-text").textContent = body.answer;
    facts($("vqa-facts"), [["adapter", body.adapter], ["base", baseName(body.base)],
      ["timings", timings(body.timings)]]);
    $("vqa-answer").hidden = false;
  });
}

// ---- wiring ------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem(KEY) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    refresh();
  });
  $("error-close").addEventListener("click", clearError);
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", tabKeys);
  }
  $("adapter").addEventListener("change", () => { showCard(); busy(null, loadViews); });
  $("series").addEventListener("change", () => {
    state.series = $("series").value;
    busy(null, loadViews);
  });
  $("upload-form").addEventListener("submit", upload);
  $("pacs-form").addEventListener("submit", importPacs);
  $("delete-study").addEventListener("click", deleteStudy);
  $("ask-form").addEventListener("submit", ask);
  $("vqa-images").addEventListener("change", previewImages);
  $("vqa-form").addEventListener("submit", askImage);
  watchReady();
});
