"""The web page at /: text search, image drop/upload search, a grid of thumbnails with scores, VQA and captions
when the server has models for them.

One self-contained HTML string (no CDN, no build step, no package data). It talks to the JSON API only; results are
put in the page with textContent, never innerHTML, so file names can't inject markup. With an API key set, the
page asks for it once, keeps it in sessionStorage and sends it as X-API-Key (thumbnails are fetched as blobs then).
"""

from __future__ import annotations

import json

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<link rel="icon" href="data:,">  <!-- no icon to fetch: each page load asked for /favicon.ico, a 404 -->
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #d0d5dd; --field: #7c8595; --accent: #2f5bea; --bg: #f7f8fa; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
  header { padding: 14px 24px; background: #fff; border-bottom: 1px solid var(--line); display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  header .meta { color: var(--muted); font-size: 13px; }
  main { max-width: 1100px; margin: 0 auto; padding: 20px 24px 40px; }
  /* wrap: on a 375 px phone the Search, Ask and Caption buttons sat beyond the screen's edge */
  form { display: flex; flex-wrap: wrap; gap: 8px; margin: 0; }
  input[type=file] { max-width: 100%; }
  /* --field, not --line: a text box's edge at 1.4:1 on white was hard to find with low vision (WCAG 1.4.11 asks 3:1) */
  input[type=search], input[type=text], input[type=password] { flex: 1 1 10em; min-width: 0; padding: 9px 12px; border: 1px solid var(--field); border-radius: 8px; font: inherit; }
  select, button { padding: 9px 14px; border: 1px solid var(--line); border-radius: 8px; font: inherit; background: #fff; cursor: pointer; }
  button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
  #drop { margin-top: 12px; border: 2px dashed var(--line); border-radius: 10px; padding: 18px; text-align: center; color: var(--muted); background: #fff; }
  #drop.over { border-color: var(--accent); color: var(--accent); }
  #drop button.link { padding: 0; border: 0; background: none; color: var(--accent); text-decoration: underline; }
  #status { min-height: 22px; margin: 12px 0 4px; color: var(--muted); }
  #add-status { margin-top: 10px; color: var(--muted); }
  #status.error, #add-status.error, #vqa-answer.error, #caption-text.error, #classify-answer.error { color: #b42318; font-weight: normal; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 14px; margin-top: 8px; }
  .hit { background: #fff; border: 1px solid var(--line); border-radius: 10px; overflow: hidden; }
  .hit img { width: 100%; aspect-ratio: 1; object-fit: cover; display: block; background: #eef0f3; }
  .hit .cap { padding: 6px 10px; font-size: 13px; display: flex; justify-content: space-between; gap: 8px; }
  .hit .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .hit .score { color: var(--muted); font-variant-numeric: tabular-nums; }
  .hit .like { display: block; width: 100%; padding: 0; border: 0; border-radius: 0; background: none; }
  /* inside the photo: the card's overflow:hidden left of the focus ring a 1 px dark line, lost on a dark photo */
  .hit .like:focus-visible { outline: 3px solid var(--accent); outline-offset: -3px; }
  /* 24 x 24 px at least: a smaller target is hard to hit with a tremor or a finger (WCAG 2.2, 2.5.8) */
  .hit .remove { min-width: 24px; min-height: 24px; padding: 0 6px; border: 0; background: none; color: var(--muted);
                 line-height: 1; }
  .hit .remove:hover, .hit .remove:focus { color: #b42318; }
  section.box { margin-top: 26px; padding: 16px; background: #fff; border: 1px solid var(--line); border-radius: 10px; }
  section.box h2 { font-size: 15px; margin: 0 0 10px; }
  #keybox { margin: 0 0 16px; }  /* above the search bar, which it must not touch */
  #add-form, #vqa-form, #caption-form, #classify-form { align-items: center; }
  #caption-text { margin-top: 10px; font-weight: 600; }
  #caption-note { color: var(--muted); font-size: 13px; }
  #vqa-answer, #classify-answer { margin-top: 10px; font-weight: 600; }
  #vqa-answer .alternatives, #classify-answer .alternatives { font-weight: normal; color: var(--muted); font-size: 13px; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<header><h1>polymodal</h1><span class="meta" id="meta">connecting…</span></header>
<main>
  <section id="keybox" class="box" hidden>
    <h2>API key</h2>
    <form id="key-form"><input id="key" type="password" placeholder="X-API-Key" aria-label="API key" autocomplete="off">
      <button class="primary" type="submit">Use key</button></form>
  </section>

  <form id="search-form" role="search">
    <input id="q" name="q" type="search" placeholder="Describe a picture, e.g. a dog on a beach"
           aria-label="Describe a picture" aria-describedby="status" autocomplete="off" autofocus>
    <select id="k" aria-label="number of results"><option>10</option><option selected>20</option><option>50</option><option>100</option></select>
    <button id="search-btn" class="primary" type="submit">Search</button>
  </form>
  <!-- a button, not a label for the hidden input: a label takes no keyboard focus, so no Tab reached it -->
  <div id="drop">Drop or paste an image here to find similar ones, or <button id="choose" class="link" type="button">choose a file</button>
    <input id="file" type="file" accept="image/*" hidden></div>

  <div id="status" role="status"></div>
  <div id="results"></div>

  <!-- aria-label: a placeholder is gone once one types, and each file input was read only as "Choose File";
       role=status: an answer or an error was not announced; aria-describedby: an error is read again at its field -->
  <section id="vqa" class="box">
    <h2>Ask about an image</h2>
    <form id="vqa-form">
      <input id="vqa-file" type="file" accept="image/*" aria-label="image to ask about" aria-describedby="vqa-answer">
      <input id="vqa-q" type="text" placeholder="Question, e.g. what colour is the car?" aria-label="Question"
             aria-describedby="vqa-answer">
      <button class="primary" type="submit">Ask</button>
    </form>
    <div id="vqa-answer" role="status"></div>
  </section>

  <section id="classify" class="box">
    <h2>Classify an image by your labels</h2>
    <form id="classify-form">
      <input id="classify-file" type="file" accept="image/*" aria-label="image to classify"
             aria-describedby="classify-answer">
      <input id="classify-labels" type="text" placeholder="Labels, comma-separated, e.g. cat, dog, car"
             aria-label="Labels, comma-separated" aria-describedby="classify-answer">
      <button class="primary" type="submit">Classify</button>
    </form>
    <div id="classify-answer" role="status"></div>
  </section>

  <section id="caption" class="box">
    <h2>Describe an image</h2>
    <form id="caption-form">
      <input id="caption-file" type="file" accept="image/*" aria-label="image to describe"
             aria-describedby="caption-text">
      <button class="primary" type="submit">Caption</button>
    </form>
    <div id="caption-text" role="status"></div>
    <div id="caption-note" role="status"></div>  <!-- the server's note of a cut or empty caption -->
  </section>

  <section class="box" id="add">
    <h2>Add images to the index</h2>
    <form id="add-form"><input id="add-files" type="file" accept="image/*" multiple aria-label="images to add"
          aria-describedby="add-status"><button type="submit">Add</button></form>
    <div id="add-status" role="status"></div>  <!-- here, not in #status far above, where no one adding looks -->
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("polymodal-key") || "";
const thumbUrls = [];
let writable = false;  // the index takes uploads and removals (a Qdrant collection is filled by pushes)
let searchable = __SEARCHABLE__;  // the server has an index (serve without --db answers questions or captions only)
const PANELS = __PANELS__;  // each panel's element ids: page.py's PANELS, which hides them before this runs
function showPanel(panel, shown) { for (const id of PANELS[panel]) $(id).hidden = !shown; }
const started = {};  // requests started per panel: an earlier one answering after a later one must not replace it
function begin(panel) {  // -> a function telling whether this request is still the panel's latest
  const mine = started[panel] = (started[panel] || 0) + 1;
  return () => mine === started[panel];
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey) h["X-API-Key"] = apiKey;
  return h;
}
function status(text, isError, where) {
  const line = $(where || "status");
  line.textContent = text;
  line.className = isError ? "error" : "";
}
const ROOT_PATH = __ROOT_PATH__;  // where a reverse proxy mounts the service (serve --root-path), "" at the root
async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  let res;
  try { res = await fetch(ROOT_PATH + path, opts); } catch (e) {  // the browser's own words: "Failed to fetch"
    throw new Error("cannot reach the server (" + e.message + "); is polymodal serve still running?");
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (res.status === 401) { $("keybox").hidden = false; }
  // no JSON: a proxy or gateway answered (its own HTML page), not polymodal; say so instead of a bare status. But a
  // plain-text 503 is polymodal's own server at serve --max-connections (uvicorn answers it before the app)
  if (!res.ok) throw new Error((body && body.error) || ("HTTP " + res.status +
    (res.statusText ? " " + res.statusText : "") + (body ? "" : res.status === 503 ?
      ": the server (or a proxy in front of it) has too many connections open; try again in a moment" :
      " from something between this page and polymodal (a proxy?), not from the server itself")));
  return body;
}
async function loadInfo() {
  try {
    const info = await api("/v1/info");
    searchable = !!info.index;  // null: served without --db, for questions or captions only
    $("meta").textContent = searchable ? info.model.name + " · " + info.index.count + " images" +
      (info.index.writable === false ? " in " + info.index.where : "") +
      (info.batching.enabled ? " · micro-batching on" : "") :
      [info.model.vqa_model && "answering questions with " + info.model.vqa_model,
       info.model.caption_model && "captioning with " + info.model.caption_model].filter(Boolean).join(" · ") +
      " · no index to search";
    showPanel("search", searchable);
    showPanel("vqa", !!info.model.vqa);
    showPanel("caption", !!info.model.caption_model);
    if (searchable) writable = info.index.writable === true;  // (else false, as it starts)
    showPanel("add", writable);  // a Qdrant collection is filled by pushes, not uploads
    $("keybox").hidden = true;
  } catch (e) {
    $("meta").textContent = "not connected";
    status(e.message, true);
  }
}
function setThumb(img, url) {
  if (!apiKey) { img.src = url; return; }
  fetch(url, { headers: headers() }).then((r) => r.ok ? r.blob() : null).then((b) => {
    if (b) { const u = URL.createObjectURL(b); thumbUrls.push(u); img.src = u; }
  });
}
function clearHits() {
  while (thumbUrls.length) URL.revokeObjectURL(thumbUrls.pop());
  $("results").replaceChildren();
}
function showHits(hits, what, warnings) {
  clearHits();
  const grid = $("results");
  for (const hit of hits) {
    const card = document.createElement("figure");
    card.className = "hit";
    card.style.margin = "0";
    card.dataset.id = hit.id;
    card.dataset.name = hit.name;
    const img = document.createElement("img");
    img.alt = hit.name;
    img.loading = "lazy";
    setThumb(img, hit.thumb);
    // the photo is a button: more like it, searched with its stored vector (a click did nothing)
    const like = document.createElement("button");
    like.type = "button"; like.className = "like"; like.title = "more like " + hit.name;
    like.setAttribute("aria-label", like.title);  // else named by the photo's alt: "cat.jpg", not what it does
    like.addEventListener("click", () => searchLike(hit));
    like.append(img);
    const cap = document.createElement("figcaption");
    cap.className = "cap";
    const name = document.createElement("span");
    name.className = "name"; name.textContent = hit.name; name.title = hit.path;
    name.dir = "auto";  // a right-to-left file name is isolated: it doesn't reorder the score beside it
    const score = document.createElement("span");
    score.className = "score"; score.textContent = hit.score.toFixed(3);
    cap.append(name, score);
    if (writable) {  // a wrong upload was undone only with curl and the JSON API
      const remove = document.createElement("button");
      remove.type = "button"; remove.className = "remove"; remove.textContent = "\u00d7";
      remove.title = "remove " + hit.name + " from the index";
      remove.setAttribute("aria-label", remove.title);
      remove.addEventListener("click", () => removeHit(hit, card));
      cap.append(remove);
    }
    card.append(like, cap);
    grid.append(card);
  }
  // a server's note (a query in words the model does not know) beside the count, where it is read
  const notes = (warnings || []).map((w) => " \u2014 note: " + w).join("");
  status((hits.length ? hits.length + " results for " + what : "no results for " + what) + notes, false);
}
function searchFailed(e) {  // the last search's photos under this error read as its results
  clearHits();
  status(e.message, true);
}
async function searchText(text) {
  const current = begin("search");
  status("searching…", false);
  try {
    const res = await api("/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: text, k: parseInt($("k").value, 10) }),
    });
    if (current()) showHits(res.hits, "\u201c" + text + "\u201d", res.warnings);
  } catch (e) { if (current()) searchFailed(e); }
}
async function searchLike(hit) {
  const current = begin("search");
  status("searching like " + hit.name + "…", false);
  try {
    const res = await api("/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ like: hit.id, k: parseInt($("k").value, 10) }),
    });
    if (!current()) return;
    // the pressed photo goes with the old results: its focus fell to the page, and a keyboard user lost their place
    const wasInResults = $("results").contains(document.activeElement);
    showHits(res.hits, "photos like " + hit.name);
    const first = $("results").querySelector(".like");
    if (wasInResults && first) first.focus();
  } catch (e) { if (current()) searchFailed(e); }
}
async function removeHit(hit, card) {
  if (!window.confirm("Remove " + hit.name + " from the index? (The file itself stays where it is.)")) return;
  try {
    const res = await api("/v1/index", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ remove: [hit.id] }),
    });
    // the removed button held the focus: it fell to <body>, nothing showed where it was, a screen reader lost its place
    const hadFocus = card.contains(document.activeElement);
    const next = card.nextElementSibling || card.previousElementSibling;
    card.remove();
    // the next photo's × (Enter again asks before removing it); its "more like" would replace the results unasked
    if (hadFocus) (next ? next.querySelector(".remove") : $("q")).focus();
    status((res.removed.length ? "removed " + hit.name + " from the index" : hit.name + " was no longer in the index")
           + "; it holds " + res.count + " images", false);
  } catch (e) { status(e.message, true); }
}
async function searchImage(file) {
  const current = begin("search");
  status("searching by image…", false);
  const form = new FormData();
  form.append("image", file);
  form.append("k", $("k").value);
  try {
    const res = await api("/v1/search", { method: "POST", body: form });
    if (current()) showHits(res.hits, file.name || "the image");
  } catch (e) { if (current()) searchFailed(e); }
}
$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("q").value.trim();
  if (text) searchText(text); else status("type what you are looking for", true);
});
$("choose").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  $("file").value = "";  // else choosing the same photo again fires no change event: the search did nothing
  if (file) searchImage(file);
});
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (ev) => {
  const file = ev.dataTransfer && ev.dataTransfer.files[0];
  // a result's thumbnail (or a picture from another page) drops a link, no file: it did nothing, without a word
  if (file) searchImage(file); else status("that drop held no image file (a picture dragged from a web page comes as a link): "
                                         + "drop a photo from your files, or choose a file", true);
});
document.addEventListener("paste", (ev) => {  // Ctrl+V of a copied picture; pasted text still goes to the box
  const file = [...((ev.clipboardData && ev.clipboardData.files) || [])].find((f) => f.type.startsWith("image/"));
  if (file && searchable) { ev.preventDefault(); searchImage(file); }
});
$("classify-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("classify-file").files[0];
  const labels = $("classify-labels").value;
  if (!file) { status("choose an image first", true, "classify-answer"); return; }
  if (!labels.trim()) { status("type two or more labels, e.g. cat, dog, car", true, "classify-answer"); return; }
  const form = new FormData();
  form.append("image", file);
  form.append("labels", labels);
  status("classifying…", false, "classify-answer");
  const current = begin("classify");
  try {
    const res = await api("/v1/classify", { method: "POST", body: form });
    const ranked = res.results[0].labels.map((l) => ({ answer: l.label, score: l.score }));
    // shown as an answer is: the best label, then the others by score, then the server's notes
    if (current()) showAnswer({ answer: ranked[0].answer, score: ranked[0].score, alternatives: ranked.slice(0, 6),
                                warnings: res.warnings }, "classify-answer");
  } catch (e) { if (current()) status(e.message, true, "classify-answer"); }
});
function pct(score) {
  return typeof score === "number" ? " (" + Math.round(score * 100) + "%)" : "";
}
function showAnswer(reply, where) {
  // a VQA model's reply: {answer, score, alternatives: [{answer, score}, ...]}; another model may send anything as answer
  const box = $(where || "vqa-answer");
  const best = document.createElement("div");
  best.textContent = typeof reply.answer === "string" ? reply.answer + pct(reply.score) : JSON.stringify(reply.answer);
  const others = (reply.alternatives || []).filter((a) => a && a.answer !== reply.answer);
  const alts = document.createElement("div");
  alts.className = "alternatives";
  alts.textContent = others.length ? "also: " + others.map((a) => a.answer + pct(a.score)).join(", ") : "";
  const notes = document.createElement("div");  // e.g. a yes/no model asked another kind of question
  notes.className = "alternatives";
  notes.textContent = (reply.warnings || []).map((w) => "note: " + w).join(" ");
  box.replaceChildren(best, alts, notes);
}
$("vqa-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("vqa-file").files[0];
  if (!file) { status("choose an image first", true, "vqa-answer"); return; }
  const form = new FormData();
  form.append("image", file);
  form.append("question", $("vqa-q").value);
  status("thinking…", false, "vqa-answer");
  const current = begin("vqa");
  try {
    const res = await api("/v1/vqa", { method: "POST", body: form });
    if (current()) showAnswer(res);
  } catch (e) { if (current()) status(e.message, true, "vqa-answer"); }  // red, not bold like an answer
});
$("caption-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("caption-file").files[0];
  $("caption-note").textContent = "";  // the last caption's
  if (!file) { status("choose an image first", true, "caption-text"); return; }
  const form = new FormData();
  form.append("image", file);
  status("writing…", false, "caption-text");
  const current = begin("caption");
  try {
    const res = await api("/v1/caption", { method: "POST", body: form });
    if (!current()) return;
    $("caption-text").textContent = res.results[0].caption;
    $("caption-note").textContent = res.warnings.map((w) => "note: " + w).join(" ");
  } catch (e) { if (current()) status(e.message, true, "caption-text"); }
});
function skippedNote(skipped) {
  // each file named with its own reason: one reason for them all ("... already in the index (id 2)") said every
  // skipped file was the first one's copy
  if (!skipped.length) return "";
  if (skipped.length === 1) return " (1 skipped: " + skipped[0].reason + ")";
  const named = skipped.slice(0, 3).map((s) => s.upload + ": " + s.reason);
  return " (" + skipped.length + " skipped: " + named.join("; ") + (skipped.length > 3 ? "; …" : "") + ")";
}
$("add-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = $("add-files").files;
  if (!files.length) { status("choose images to add", true, "add-status"); return; }
  const form = new FormData();
  for (const f of files) form.append("image", f);
  status("adding " + files.length + (files.length === 1 ? " image…" : " images…"), false, "add-status");
  try {
    const res = await api("/v1/index", { method: "POST", body: form });
    status("added " + res.added.length + (res.added.length === 1 ? " image" : " images") + skippedNote(res.skipped) + "; the index holds " + res.count, false,
           "add-status");
    loadInfo();
  } catch (e) { status(e.message, true, "add-status"); }
});
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  apiKey = $("key").value.trim();
  sessionStorage.setItem("polymodal-key", apiKey);
  status("", false);
  loadInfo();
});
loadInfo();
</script>
</body>
</html>
"""


# the panels of the page, by what they serve: the page comes with those of its server only (all were shown until
# /v1/info answered: an index-less server's search box, a read-only index's Add panel)
PANELS = {"search": ("search-form", "drop", "classify"), "add": ("add",), "vqa": ("vqa",), "caption": ("caption",)}


def render_page(root_path: str = "", serves: list[str] | None = None,
                panels: tuple[str, ...] = ("search", "add")) -> str:
    """The page, its API calls prefixed with `root_path` (as a JSON string, with "<" escaped: it sits in a script);
    `serves`: what a server without an index gives ("answers", "captions"), which its title says instead of search;
    `panels`: the PANELS the server serves, the others hidden (/v1/info's answer shows and hides them too)."""
    page = PAGE
    for element in (e for panel, ids in PANELS.items() if panel not in panels for e in ids):
        page = page.replace(f'id="{element}"', f'id="{element}" hidden', 1)
    title = "polymodal " + " and ".join(serves) if serves else "polymodal search"
    page = page.replace("__ROOT_PATH__", json.dumps(root_path).replace("<", "\\u003c")).replace("__TITLE__", title)
    page = page.replace("__PANELS__", json.dumps(PANELS))  # the script shows and hides the same elements
    return page.replace("__SEARCHABLE__", json.dumps("search" in panels))
