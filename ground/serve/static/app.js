// The grounding page: pick (or upload) a video, ask sentences, see and click the predicted windows.
// Plain DOM, no build step. All server text is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const player = $("player");
const state = { video: null, upload: null, duration: null };

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// fetch + JSON, turning the API's {"error": ...} bodies into thrown Errors.
async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    const detail = body.detail ? `: ${body.detail.map((d) => d.msg).join("; ")}` : "";
    throw new Error(`${response.status} ${body.error}${detail}`);
  }
  return body;
}

function formatSec(sec) {
  const m = Math.floor(sec / 60);
  const s = (sec - 60 * m).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

async function loadHealth() {
  const health = await api("/health");
  $("health").textContent =
    `${health.checkpoint} · ${health.video_encoders.join("+")} / ${health.text_encoder} · ` +
    `not-found threshold ${health.presence_threshold.toFixed(2)}`;
}

async function loadVideos() {
  const { videos } = await api("/videos");
  const list = $("video-list");
  list.replaceChildren();
  for (const video of videos) {
    const item = el("li");
    const button = el("button", "video-item", video.id);
    button.type = "button";
    button.dataset.id = video.id;
    button.append(el("span", "kind", video.kind === "cache" ? "cached" : "file"));
    button.addEventListener("click", () => selectVideo(video, button));
    item.append(button);
    list.append(item);
  }
  if (!videos.length) list.append(el("li", "muted", "no videos under the media root"));
}

function clearResults() {
  state.duration = null;
  $("timeline").replaceChildren();
  setStatus("");
}

function selectVideo(video, button) {
  state.video = video;
  state.upload = null;
  $("upload-file").value = "";
  for (const b of document.querySelectorAll("#video-list button")) b.classList.toggle("selected", b === button);
  if (video.url) {
    player.src = video.url;
  } else {
    player.removeAttribute("src");
    player.load();
  }
  $("now-playing").textContent = video.url ? video.id : `${video.id} (features only: no playable file)`;
  const suggestions = $("suggestions");
  suggestions.replaceChildren();
  for (const text of video.queries || []) {
    const chip = el("button", "suggestion", text);
    chip.type = "button";
    chip.addEventListener("click", () => { $("queries").value = text; });
    suggestions.append(chip);
  }
  clearResults();
}

$("upload-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  state.upload = file;
  state.video = null;
  for (const b of document.querySelectorAll("#video-list button")) b.classList.remove("selected");
  player.src = URL.createObjectURL(file);
  $("now-playing").textContent = `${file.name} (uploaded with each query)`;
  $("suggestions").replaceChildren();
  clearResults();
});

$("query-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const queries = $("queries").value.split("\n").map((q) => q.trim()).filter((q) => q);
  if (!state.video && !state.upload) return setStatus("Pick or upload a video first.", true);
  if (!queries.length) return setStatus("Type a sentence to look for.", true);
  const topK = Number($("top-k").value) || 5;
  const c2f = $("c2f").value;
  let options;
  if (state.upload) {
    const form = new FormData();
    form.append("file", state.upload);
    for (const q of queries) form.append("queries", q);
    form.append("top_k", String(topK));
    if (c2f) form.append("coarse_to_fine", c2f);
    options = { method: "POST", body: form };
  } else {
    const body = { video_id: state.video.id, queries, top_k: topK };
    if (c2f) body.coarse_to_fine = c2f === "true";
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  $("submit").disabled = true;
  setStatus("Grounding…");
  try {
    const data = await api("/ground", options);
    render(data);
    setStatus(`${data.results.length} quer${data.results.length === 1 ? "y" : "ies"} on ${data.video_id}`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    $("submit").disabled = false;
  }
});

function place(node, start, end, duration) {
  node.style.left = `${(100 * start) / duration}%`;
  node.style.width = `${(100 * Math.max(end - start, 0)) / duration}%`;
}

function render(data) {
  const duration = data.duration_sec;
  state.duration = duration;
  const timeline = $("timeline");
  timeline.replaceChildren();
  for (const result of data.results) {
    const track = el("div", "track");
    const label = el("div", "track-label");
    label.append(el("span", "query", result.query));
    label.append(el("span", result.found ? "badge" : "badge not-found", result.found ? "found" : "not found"));
    if (result.presence !== null) label.append(el("span", "muted", `presence ${result.presence.toFixed(2)}`));
    if (result.refined) label.append(el("span", "muted", "refined"));
    track.append(label);

    const bar = el("div", "bar");
    for (const [start, end] of result.ground_truth || []) {
      const gt = el("div", "gt");
      gt.title = `ground truth ${formatSec(start)}–${formatSec(end)}`;
      place(gt, start, end, duration);
      bar.append(gt);
    }
    // Worst first, so the best window is drawn on top.
    result.windows.map((w, rank) => [w, rank]).reverse().forEach(([w, rank]) => {
      const node = el("div", `window rank-${rank + 1}`);
      node.dataset.start = String(w.start_sec);
      node.dataset.end = String(w.end_sec);
      node.style.opacity = String(1 - (0.6 * rank) / Math.max(1, result.windows.length - 1));
      node.title = `#${rank + 1} ${formatSec(w.start_sec)}–${formatSec(w.end_sec)} (score ${w.score.toFixed(2)})`;
      place(node, w.start_sec, w.end_sec, duration);
      node.addEventListener("click", () => seek(w.start_sec));
      bar.append(node);
    });
    bar.append(el("div", "playhead"));
    track.append(bar);

    if (result.saliency && result.saliency.length) {
      const strip = el("div", "saliency");
      const values = result.saliency.map(([, s]) => s);
      const lo = Math.min(...values);
      const span = Math.max(...values) - lo || 1;
      const step = result.saliency.length > 1 ? result.saliency[1][0] - result.saliency[0][0] : duration;
      for (const [t, s] of result.saliency) {
        const cell = el("span");
        place(cell, Math.max(0, t - step / 2), Math.min(duration, t + step / 2), duration);
        cell.style.height = `${Math.round(100 * ((s - lo) / span))}%`;
        strip.append(cell);
      }
      track.append(strip);
    }
    const axis = el("div", "axis");
    axis.append(el("span", "", "0:00.0"), el("span", "", formatSec(duration)));
    track.append(axis);
    timeline.append(track);
  }
  movePlayheads(duration);
}

function seek(sec) {
  player.currentTime = sec;
  player.play().catch(() => {}); // autoplay may be refused; the seek stands either way
}

function movePlayheads(duration) {
  const left = `${(100 * player.currentTime) / duration}%`;
  for (const head of document.querySelectorAll(".playhead")) head.style.left = left;
}

player.addEventListener("timeupdate", () => {
  if (state.duration) movePlayheads(state.duration);
});

loadHealth().catch((error) => setStatus(error.message, true));
loadVideos().catch((error) => setStatus(error.message, true));
