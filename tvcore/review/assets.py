"""The review page: its HTML, style and code, served from these strings (no file system, no CDN).

The code builds every element with the DOM API and puts data (file and class
names, errors) in with textContent or attribute setters only, never innerHTML,
so a file called `<img onerror=...>.png` is shown as that text.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tvclean review</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/app.css">
</head>
<body>
<header id="top">
  <div class="brand">tvclean review <span id="run-name"></span></div>
  <div id="counts" aria-live="polite">
    <span><b id="reviewed">0</b> reviewed</span>
    <span><b id="remaining">0</b> remaining</span>
    <span class="minor">kept <b id="kept">0</b></span>
    <span class="minor">discarded <b id="discarded-count">0</b></span>
    <span class="minor">relabelled <b id="relabelled">0</b></span>
    <span id="saved" class="minor"></span>
  </div>
  <input id="search" type="search" placeholder="search file names  ( / )" autocomplete="off"
         spellcheck="false" aria-label="search file names">
</header>
<nav id="views" aria-label="views"></nav>
<div id="legend"></div>
<div id="pager-top" class="pager"></div>
<main id="grid"></main>
<div id="pager-bottom" class="pager"></div>
<div id="overlay" hidden>
  <div class="overlay-box">
    <img id="large" alt="">
    <div id="large-caption"></div>
  </div>
</div>
<div id="picker" hidden>
  <div class="picker-box">
    <div class="picker-title">Relabel as… <span class="minor">(type to filter, Enter picks,
      Esc closes)</span></div>
    <input id="picker-filter" type="text" autocomplete="off" spellcheck="false"
           aria-label="filter classes">
    <ul id="picker-list"></ul>
  </div>
</div>
<div id="toast" role="status" hidden></div>
<script src="/app.js"></script>
</body>
</html>
"""

STYLE = r"""
* { box-sizing: border-box; }
html, body { margin: 0; background: #eceff3; color: #1c232b;
  font: 14px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header#top { position: sticky; top: 0; z-index: 5; display: flex; align-items: center; gap: 24px;
  padding: 10px 18px; background: #1f2a36; color: #f4f6f8; }
.brand { font-weight: 600; font-size: 16px; white-space: nowrap; }
#run-name { font-weight: 400; color: #b8c4d0; margin-left: 6px; display: inline-block;
  max-width: 28vw; overflow: hidden; text-overflow: ellipsis; vertical-align: bottom; }
#counts { display: flex; gap: 18px; flex: 1; flex-wrap: wrap; font-size: 15px; }
#counts b { font-variant-numeric: tabular-nums; }
#counts .minor { color: #b8c4d0; font-size: 13px; align-self: center; }
#saved { color: #8fe3a8 !important; }
#search { width: 300px; padding: 6px 10px; border-radius: 6px; border: 1px solid #4b5a6a;
  background: #2c3a48; color: #fff; font-size: 14px; }
nav#views { display: flex; flex-wrap: wrap; gap: 6px; padding: 10px 18px 4px; }
nav#views button, nav#views select { font: inherit; padding: 6px 12px; border-radius: 6px;
  border: 1px solid #c3ccd5; background: #fff; color: #1c232b; cursor: pointer; }
nav#views button.active, nav#views select.active { background: #2563c9; border-color: #2563c9;
  color: #fff; }
nav#views .count { color: #6b7785; margin-left: 4px; font-variant-numeric: tabular-nums; }
nav#views button.active .count { color: #dbe6fb; }
#legend { padding: 4px 18px 6px; color: #4a5663; font-size: 13px; display: flex;
  flex-wrap: wrap; gap: 4px 16px; }
kbd { display: inline-block; min-width: 20px; padding: 1px 5px; border: 1px solid #aab4be;
  border-bottom-width: 2px; border-radius: 4px; background: #fff; font: 12px/1.4 ui-monospace,
  "DejaVu Sans Mono", monospace; text-align: center; color: #1c232b; margin-right: 3px; }
.pager { display: flex; align-items: center; gap: 12px; padding: 6px 18px; color: #4a5663; }
.pager button { font: inherit; padding: 4px 12px; border-radius: 6px; border: 1px solid #c3ccd5;
  background: #fff; cursor: pointer; }
.pager button:disabled { opacity: .4; cursor: default; }
main#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(214px, 1fr));
  gap: 12px; padding: 6px 18px 12px; }
.empty { grid-column: 1 / -1; padding: 40px; text-align: center; color: #4a5663;
  font-size: 16px; }
.card { position: relative; background: #fff; border-radius: 8px; padding: 8px 8px 6px;
  border-top: 5px solid #9aa5b1; box-shadow: 0 1px 2px rgba(0,0,0,.12); cursor: pointer; }
.card.dec-dirty, .card.dec-outlier { border-top-color: #d6453d; }
.card.dec-clean { border-top-color: #2e9d52; }
.card.dec-relabel { border-top-color: #2563c9; }
.card.dec-error { border-top-color: #7b8794; }
.card.focus { outline: 3px solid #2563c9; outline-offset: 2px; }
.card.rev-clean { background: #eaf7ee; }
.card.rev-dirty { background: #fbeceb; }
.card.rev-relabel { background: #e9f0fc; }
.card.saving { opacity: .6; }
.pic { position: relative; height: 196px; display: flex; align-items: center;
  justify-content: center; background: #f1f3f5; border-radius: 4px; overflow: hidden; }
.pic img { max-width: 100%; max-height: 100%; object-fit: contain; }
.pic img.small { width: 100%; height: 100%; image-rendering: pixelated; }
.placeholder { padding: 10px; text-align: center; color: #5b6672; font-size: 13px;
  overflow-wrap: anywhere; }
.placeholder b { display: block; color: #b3261e; margin-bottom: 4px; font-size: 14px; }
.badge { position: absolute; top: 6px; right: 6px; padding: 3px 8px; border-radius: 12px;
  font-weight: 600; font-size: 13px; color: #fff; box-shadow: 0 1px 3px rgba(0,0,0,.3); }
.badge.rev-clean { background: #2e9d52; }
.badge.rev-dirty { background: #d6453d; }
.badge.rev-relabel { background: #2563c9; }
.labels { margin-top: 6px; font-size: 15px; font-weight: 600; overflow-wrap: anywhere; }
.labels .arrow { color: #6b7785; font-weight: 400; }
.labels .suggested { color: #2563c9; }
.labels .none { color: #9aa5b1; font-weight: 400; }
.nums { margin-top: 2px; font-size: 13px; color: #303a44; font-variant-numeric: tabular-nums; }
.nums .neg { color: #b3261e; font-weight: 600; }
.nums .pos { color: #1f7a3f; font-weight: 600; }
.status { font-size: 12px; color: #5b6672; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.name { font-size: 12px; color: #5b6672; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; margin-top: 2px; }
.actions { display: flex; gap: 4px; margin-top: 6px; }
.actions button { flex: 1; font: inherit; font-size: 12px; padding: 3px 0; border-radius: 5px;
  border: 1px solid #c3ccd5; background: #f8f9fa; cursor: pointer; }
.actions button:hover { background: #e4e8ec; }
#overlay { position: fixed; inset: 0; z-index: 20; background: rgba(15,20,26,.85);
  display: flex; align-items: center; justify-content: center; }
#overlay[hidden], #picker[hidden], #toast[hidden] { display: none; }
.overlay-box { max-width: 94vw; max-height: 94vh; display: flex; flex-direction: column;
  align-items: center; gap: 8px; }
#large { max-width: 94vw; max-height: 82vh; min-width: 256px; object-fit: contain;
  background: #fff; image-rendering: auto; }
#large.small { image-rendering: pixelated; min-height: 60vh; }
#large-caption { color: #f4f6f8; font-size: 15px; text-align: center; overflow-wrap: anywhere; }
#picker { position: fixed; inset: 0; z-index: 30; background: rgba(15,20,26,.5);
  display: flex; align-items: flex-start; justify-content: center; padding-top: 12vh; }
.picker-box { background: #fff; border-radius: 8px; padding: 12px; width: 380px;
  box-shadow: 0 6px 24px rgba(0,0,0,.3); }
.picker-title { font-weight: 600; margin-bottom: 6px; }
#picker-filter { width: 100%; padding: 6px 8px; font: inherit; border: 1px solid #c3ccd5;
  border-radius: 5px; }
#picker-list { list-style: none; margin: 6px 0 0; padding: 0; max-height: 50vh;
  overflow-y: auto; }
#picker-list li { padding: 5px 8px; border-radius: 4px; cursor: pointer;
  overflow-wrap: anywhere; }
#picker-list li.sel { background: #2563c9; color: #fff; }
.minor { color: #6b7785; font-weight: 400; font-size: 12px; }
#toast { position: fixed; bottom: 18px; left: 50%; transform: translateX(-50%); z-index: 40;
  background: #1f2a36; color: #fff; padding: 8px 16px; border-radius: 6px; font-size: 14px;
  max-width: 80vw; }
#toast.error { background: #b3261e; }
"""

SCRIPT = r"""
"use strict";
const PAGE_SIZE = 60;
const S = { summary: null, view: "next", label: "", q: "", offset: 0, history: [],
            page: null, focus: 0, prefetched: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  options.credentials = "same-origin";
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new Error((data && data.error) || ("HTTP " + response.status));
  return data;
}

// Decisions go to the server one after the other, in the order they were made (an undo
// right after a decision must not overtake it).
let saving = Promise.resolve();
function post(path, body) {
  const done = saving.then(() => api(path, body));
  saving = done.catch(() => {});
  return done;
}

let toastTimer = null;
function toast(message, error) {
  const box = $("toast");
  box.textContent = message;
  box.className = error ? "error" : "";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, error ? 8000 : 2500);
}

const fmt = (n) => Number(n).toLocaleString("en-US");

// --- the header, the views and the legend ------------------------------------------------

function showCounts(counts) {
  $("reviewed").textContent = fmt(counts.reviewed);
  $("remaining").textContent = fmt(counts.remaining);
  $("kept").textContent = fmt(counts.kept);
  $("discarded-count").textContent = fmt(counts.discarded);
  $("relabelled").textContent = fmt(counts.relabelled);
  for (const [view, n] of Object.entries(counts.views)) {
    const span = document.querySelector(`#views button[data-view="${view}"] .count`);
    if (span) span.textContent = fmt(n);
  }
}

const VIEW_NAMES = [["next", "Review next"], ["discarded", "Discarded"],
  ["borderline", "Borderline"], ["unreadable", "Unreadable"], ["reviewed", "Reviewed"],
  ["all", "All"]];

function buildViews() {
  const nav = $("views");
  nav.replaceChildren();
  for (const [view, name] of VIEW_NAMES) {
    nav.append(el("button", { "data-view": view, onclick: () => go(view, "") }, name,
                  el("span", { class: "count" })));
  }
  for (const [view, name, key] of [["class", "Given label…", "given"],
                                   ["suggested", "Suggested label…", "suggested"]]) {
    const select = el("select", { "data-view": view, "aria-label": name,
      onchange: (e) => { if (e.target.value) go(view, e.target.value); } });
    select.append(el("option", { value: "", text: name }));
    for (const c of S.summary.classes) {
      if (view === "suggested" && c[key] === 0) continue;
      select.append(el("option", { value: c.name, text: `${c.name} (${fmt(c[key])})` }));
    }
    nav.append(select);
  }
}

function markView() {
  for (const node of document.querySelectorAll("#views [data-view]")) {
    const on = node.dataset.view === S.view;
    node.classList.toggle("active", on);
    if (node.tagName === "SELECT") node.value = on ? S.label : "";
  }
}

function buildLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  const key = (k, what) => el("span", {}, el("kbd", { text: k }), what);
  legend.append(key("k", "keep"), key("d", "discard"), key("s", "take suggestion"));
  S.summary.classes.slice(0, 9).forEach((c, i) => legend.append(key(String(i + 1), c.name)));
  legend.append(key("r", "relabel…"), key("u", "undo"), key("←↑→↓", "move"),
                key("Enter", "enlarge"), key("n", "next page"), key("p", "previous page"),
                key("/", "search"));
}

// --- pages of a view ---------------------------------------------------------------------

function itemsUrl(offset) {
  const p = new URLSearchParams({ view: S.view, offset: String(offset), size: String(PAGE_SIZE) });
  if (S.label) p.set("label", S.label);
  if (S.q) p.set("q", S.q);
  return "/api/items?" + p.toString();
}

function saveHash() {
  const p = new URLSearchParams({ view: S.view });
  if (S.label) p.set("label", S.label);
  if (S.q) p.set("q", S.q);
  if (S.offset) p.set("offset", String(S.offset));
  history.replaceState(null, "", "#" + p.toString());
}

function go(view, label) {
  S.view = view; S.label = label; S.offset = 0; S.history = []; S.focus = 0;
  load();
}

let loading = 0;  // only the latest request may draw the grid (an older one may answer later)
async function load(focusLast) {
  markView();
  saveHash();
  let page;
  const url = itemsUrl(S.offset);
  const mine = ++loading;
  try {
    page = (S.prefetched && S.prefetched.url === url) ? S.prefetched.page : await api(url);
  } catch (e) { if (mine === loading) toast("could not load: " + e.message, true); return; }
  if (mine !== loading) return;
  S.prefetched = null;
  S.page = page;
  showCounts(page.counts);
  render();
  setFocus(focusLast ? page.items.length - 1 : Math.min(S.focus, page.items.length - 1));
  prefetch();
}

function prefetch() {
  const page = S.page;
  if (!page || page.next_offset === null) return;
  const url = itemsUrl(page.next_offset);
  api(url).then((next) => {
    if (S.page !== page) return;
    S.prefetched = { url: url, page: next };
    for (const item of next.items) if (!item.error) new Image().src = thumbUrl(item, "s");
  }).catch(() => {});
}

function nextPage() {
  if (!S.page || S.page.next_offset === null) return false;
  S.history.push(S.offset);
  S.offset = S.page.next_offset; S.focus = 0;
  load();
  return true;
}

function prevPage(focusLast) {
  if (S.history.length) S.offset = S.history.pop();
  else if (S.view !== "next" && S.offset > 0) S.offset = Math.max(0, S.offset - PAGE_SIZE);
  else return false;
  S.focus = 0;
  load(focusLast);
  return true;
}

function pager(node) {
  node.replaceChildren();
  const page = S.page;
  const first = page.items.length ? page.before + 1 : 0;
  const last = page.before + page.items.length;
  const what = S.view === "next" ? "still to review" : "images";
  node.append(
    el("button", { class: "prev", onclick: () => prevPage(), text: "‹ previous" }),
    el("span", { class: "range", text: `${fmt(first)}–${fmt(last)} of ${fmt(page.total)} ${what}` }),
    el("button", { class: "next", onclick: () => nextPage(), text: "next ›" }));
  node.querySelector(".prev").disabled = !S.history.length && (S.view === "next" || !S.offset);
  node.querySelector(".next").disabled = page.next_offset === null;
}

function render() {
  const grid = $("grid");
  grid.replaceChildren();
  const page = S.page;
  if (!page.items.length) {
    const message = S.view === "next" && !S.q ? "Nothing left to review in this queue."
      : "No images in this view" + (S.q ? " match the search." : ".");
    grid.append(el("div", { class: "empty", text: message }));
  }
  page.items.forEach((item, i) => grid.append(card(item, i)));
  pager($("pager-top"));
  pager($("pager-bottom"));
}

const thumbUrl = (item, size) => `/api/thumb?row=${item.row}&size=${size}`;

function placeholder(pic, title, detail) {
  pic.replaceChildren(el("div", { class: "placeholder" }, el("b", { text: title }), detail || ""));
}

const DECIDED = { clean: "kept", dirty: "discarded", relabel: "relabelled",
                  outlier: "of no class", error: "unreadable" };

function reviewText(review) {
  if (!review) return "";
  if (review.decision === "clean") return "✓ keep";
  if (review.decision === "dirty") return "✗ discard";
  return "→ " + review.label;
}

function card(item, index) {
  const node = el("div", { class: "card", "data-row": String(item.row) });
  node.dataset.index = String(index);
  fillCard(node, item);
  node.addEventListener("click", (e) => {
    setFocus(Number(node.dataset.index));
    const action = e.target.closest("button");
    if (action) act(action.dataset.act);
  });
  node.addEventListener("dblclick", (e) => { if (!e.target.closest("button")) enlarge(); });
  return node;
}

function fillCard(node, item) {
  node.classList.remove("dec-clean", "dec-dirty", "dec-relabel", "dec-outlier", "dec-error",
                        "rev-clean", "rev-dirty", "rev-relabel", "saving");
  node.classList.add("dec-" + item.decision);
  if (item.review) node.classList.add("rev-" + item.review.decision);
  const pic = el("div", { class: "pic" });
  if (item.error) {
    placeholder(pic, "unreadable", item.error);
  } else {
    const img = el("img", { alt: "", decoding: "async" });
    img.addEventListener("load", () => { if (img.naturalWidth < 150) img.classList.add("small"); });
    img.addEventListener("error", () => {
      placeholder(pic, "cannot be read now", item.path);
      api(thumbUrl(item, "s")).catch((e) => placeholder(pic, "cannot be read now",
                                                         e.message + ": " + item.path));
    });
    img.src = thumbUrl(item, "s");
    pic.append(img);
  }
  if (item.review) pic.append(el("span", { class: "badge rev-" + item.review.decision,
                                           text: reviewText(item.review) }));
  const labels = el("div", { class: "labels" }, el("span", { class: "given", text: item.given }),
                    " ", el("span", { class: "arrow", text: "→" }), " ",
                    item.suggested ? el("span", { class: "suggested", text: item.suggested })
                                   : el("span", { class: "suggested none", text: "no suggestion" }));
  const nums = el("div", { class: "nums" });
  if (item.p_right !== "") {  // the posterior rule: a probability, no standard error
    const sign = item.score.startsWith("-") ? "neg" : "pos";
    nums.append("label right: p ", el("span", { class: "score " + sign, text: item.p_right }));
    nums.title = "log-odds " + item.score;
  } else if (item.score !== "") {
    const sign = item.score.startsWith("-") ? "neg" : "pos";
    nums.append("score ", el("span", { class: "score " + sign, text: item.score }),
                " ±\u00a0", el("span", { class: "stderr", text: item.stderr }));
  } else {
    nums.append("no score");
  }
  const status = el("div", { class: "status" },
    (DECIDED[item.decision] || item.decision) +
    (item.source === "reviewed" ? " (reviewed)" : "") +
    (item.margin !== "" && item.p_right === "" ? ` · margin ${item.margin} SE` : ""));
  status.title = "the decision in training_values.csv, and how many standard errors its " +
                 "score lies from the threshold (small: uncertain)";
  const name = el("div", { class: "name", title: item.path, text: item.name });
  const actions = el("div", { class: "actions" },
    el("button", { "data-act": "clean", title: "keep (k)", text: "Keep k" }),
    el("button", { "data-act": "dirty", title: "discard (d)", text: "Discard d" }),
    el("button", { "data-act": "relabel", title: "relabel (r, 1–9)", text: "Relabel r" }));
  node.replaceChildren(pic, labels, nums, status, name, actions);
  node.item = item;
}

function cards() { return Array.from(document.querySelectorAll("#grid .card")); }

function setFocus(index) {
  const all = cards();
  if (!all.length) { S.focus = 0; return; }
  index = Math.max(0, Math.min(index, all.length - 1));
  for (const c of all) c.classList.remove("focus");
  all[index].classList.add("focus");
  S.focus = index;
  all[index].scrollIntoView({ block: "nearest" });
  if (!$("overlay").hidden) enlarge();
}

function focused() { return cards()[S.focus]; }

function columns() {
  const all = cards();
  if (!all.length) return 1;
  const top = all[0].offsetTop;
  let n = 0;
  while (n < all.length && all[n].offsetTop === top) n++;
  return Math.max(1, n);
}

function move(step) {
  const all = cards();
  const target = S.focus + step;
  if (target >= all.length) { if (!nextPage()) setFocus(all.length - 1); return; }
  if (target < 0) { if (!prevPage(true)) setFocus(0); return; }
  setFocus(target);
}

// --- decisions ---------------------------------------------------------------------------

function act(action) {
  if (action === "relabel") openPicker();
  else decide(action, "");
}

async function decide(decision, label) {
  const node = focused();
  if (!node) return;
  const item = node.item;
  node.classList.add("saving");
  const index = S.focus;
  if (index + 1 < cards().length) setFocus(index + 1);
  let answer;
  try {
    answer = await post("/api/review", { row: item.row, decision: decision, label: label });
  } catch (e) {
    node.classList.remove("saving");
    toast("NOT saved: " + e.message, true);
    return;
  }
  fillCard(node, answer.item);
  showCounts(answer.counts);
  flashSaved();
  if (index + 1 >= cards().length && S.focus === index) nextPage();
}

function suggest() {
  const node = focused();
  if (!node) return;
  if (node.item.suggested) decide("relabel", node.item.suggested);
  else toast("no suggested label for " + node.item.name);
}

async function undo() {
  let answer;
  try { answer = await post("/api/undo", {}); } catch (e) { toast(e.message, true); return; }
  showCounts(answer.counts);
  const node = cards().find((c) => c.item.row === answer.item.row);
  if (node) { fillCard(node, answer.item); setFocus(Number(node.dataset.index)); }
  const now = answer.item.review ? reviewText(answer.item.review) : "not reviewed";
  toast(`undone: ${answer.item.name} is ${now}`);
  flashSaved();
}

let savedTimer = null;
function flashSaved() {
  $("saved").textContent = "saved";
  clearTimeout(savedTimer);
  savedTimer = setTimeout(() => { $("saved").textContent = ""; }, 1200);
}

// --- the relabel picker and the enlarged view --------------------------------------------

let pickerIndex = 0;
function pickerChoices() {
  const text = $("picker-filter").value.toLowerCase();
  return S.summary.classes.map((c, i) => [c.name, i])
    .filter(([name]) => name.toLowerCase().includes(text));
}

function drawPicker() {
  const list = $("picker-list");
  list.replaceChildren();
  const choices = pickerChoices();
  pickerIndex = Math.max(0, Math.min(pickerIndex, choices.length - 1));
  choices.forEach(([name, i], n) => {
    const li = el("li", { class: n === pickerIndex ? "sel" : "",
                          onclick: () => { closePicker(); decide("relabel", name); } });
    if (i < 9) li.append(el("kbd", { text: String(i + 1) }));
    li.append(name);
    list.append(li);
  });
}

function openPicker() {
  if (!focused()) return;
  $("picker").hidden = false;
  $("picker-filter").value = "";
  pickerIndex = 0;
  drawPicker();
  $("picker-filter").focus();
}

function closePicker() { $("picker").hidden = true; $("picker-filter").blur(); }

function pickerKey(e) {
  const choices = pickerChoices();
  if (e.key === "Escape") { closePicker(); }
  else if (e.key === "ArrowDown") { pickerIndex++; drawPicker(); }
  else if (e.key === "ArrowUp") { pickerIndex--; drawPicker(); }
  else if (e.key === "Enter") {
    if (choices.length) { closePicker(); decide("relabel", choices[pickerIndex][0]); }
  } else if (/^[1-9]$/.test(e.key) && $("picker-filter").value === "") {
    const c = S.summary.classes[Number(e.key) - 1];
    if (c) { closePicker(); decide("relabel", c.name); }
  } else { return; }
  e.preventDefault();
}

function enlarge() {
  const node = focused();
  if (!node) return;
  const item = node.item;
  $("overlay").hidden = false;
  const img = $("large");
  img.classList.remove("small");
  if (item.error) { img.removeAttribute("src"); img.alt = item.error; }
  else { img.alt = ""; img.src = thumbUrl(item, "l"); }
  const caption = $("large-caption");
  caption.replaceChildren(
    el("div", { text: `${item.given} → ${item.suggested || "no suggestion"}` +
                      (item.p_right !== "" ? ` · label right: p ${item.p_right}`
                       : item.score !== "" ? ` · score ${item.score} ± ${item.stderr}` : "") +
                      ` · ${DECIDED[item.decision] || item.decision}` +
                      (item.review ? " · you: " + reviewText(item.review) : "") }),
    el("div", { class: "minor", text: item.path }));
}

$("large").addEventListener("load", () => {
  const img = $("large");
  if (img.naturalWidth < 300) img.classList.add("small");
});
$("overlay").addEventListener("click", () => { $("overlay").hidden = true; });

// --- keys --------------------------------------------------------------------------------

document.addEventListener("keydown", (e) => {
  if (!$("picker").hidden) { pickerKey(e); return; }
  const target = e.target;
  if (target === $("search")) {
    if (e.key === "Escape" || e.key === "Enter") { target.blur(); e.preventDefault(); }
    return;
  }
  if (target && (target.tagName === "SELECT" || target.tagName === "INPUT")) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key;
  if (key === "Escape") { $("overlay").hidden = true; }
  else if (key === "ArrowRight") move(1);
  else if (key === "ArrowLeft") move(-1);
  else if (key === "ArrowDown") move(columns());
  else if (key === "ArrowUp") move(-columns());
  else if (key === "k") decide("clean", "");
  else if (key === "d") decide("dirty", "");
  else if (key === "r") openPicker();
  else if (key === "s") suggest();
  else if (key === "u") undo();
  else if (/^[1-9]$/.test(key)) {
    const c = S.summary.classes[Number(key) - 1];
    if (c) decide("relabel", c.name);
  }
  else if (key === "Enter" || key === " ") {
    if ($("overlay").hidden) enlarge(); else $("overlay").hidden = true;
  }
  else if (key === "n" || key === "PageDown") nextPage();
  else if (key === "p" || key === "PageUp") prevPage();
  else if (key === "/") { $("search").focus(); }
  else return;
  e.preventDefault();
});

$("picker-filter").addEventListener("input", () => { pickerIndex = 0; drawPicker(); });
$("picker").addEventListener("click", (e) => { if (e.target === $("picker")) closePicker(); });

let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    S.q = $("search").value.trim(); S.offset = 0; S.history = []; S.focus = 0;
    load();
  }, 200);
});

// --- start -------------------------------------------------------------------------------

async function start() {
  try { S.summary = await api("/api/state"); }
  catch (e) { toast("could not load the run: " + e.message, true); return; }
  $("run-name").textContent = S.summary.run;
  $("run-name").title = S.summary.run;
  document.title = "tvclean review: " + S.summary.name;
  buildViews();
  buildLegend();
  const p = new URLSearchParams(location.hash.slice(1));
  const view = p.get("view");
  if (view && (VIEW_NAMES.some(([v]) => v === view) || view === "class" || view === "suggested")) {
    S.view = view; S.label = p.get("label") || ""; S.q = p.get("q") || "";
    S.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
    $("search").value = S.q;
  }
  await load();
}

start();
"""

FILES = {
    "/": ("text/html; charset=utf-8", PAGE.encode("utf-8")),
    "/app.css": ("text/css; charset=utf-8", STYLE.encode("utf-8")),
    "/app.js": ("text/javascript; charset=utf-8", SCRIPT.encode("utf-8")),
}
