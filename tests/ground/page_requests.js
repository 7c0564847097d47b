// Runs the page script (argv[2]) against a stub DOM and fetch, picks the cached video "amber",
// asks two sentences as JSON, then uploads a file and asks again; prints the /ground requests.
// Used by test_serve.py to send exactly what the page sends.
"use strict";
const fs = require("fs");
const created = [];
const byId = {};
function element(id) {
  const node = {
    id, value: "", dataset: {}, style: {}, textContent: "", disabled: false, listeners: {},
    classList: { toggle() {}, remove() {}, add() {} },
    addEventListener(type, fn) { this.listeners[type] = fn; },
    replaceChildren() {}, append() {}, load() {}, removeAttribute() {},
    play() { return Promise.resolve(); },
  };
  created.push(node);
  return node;
}
global.document = {
  getElementById: (id) => (byId[id] ??= element(id)),
  createElement: () => element(null),
  querySelectorAll: () => [],
};
const sent = [];
global.fetch = async (path, options = {}) => {
  sent.push({ path, options });
  const body = path === "/health"
    ? { checkpoint: "m.ckpt", video_encoders: ["tiny_clip"], text_encoder: "tiny_clip", presence_threshold: 0.5 }
    : path === "/videos"
      ? { videos: [{ id: "amber", kind: "cache", url: null, queries: [] }] }
      : { video_id: "amber", duration_sec: 8, results: [] };
  return { ok: true, status: 200, json: async () => body };
};
global.FormData = class { constructor() { this.items = []; } append(k, v) { this.items.push([k, v]); } };
global.URL = { createObjectURL: () => "blob:upload" };
const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

(async () => {
  eval(fs.readFileSync(process.argv[2], "utf8"));
  await tick();
  const $ = document.getElementById;
  $("queries").value = "a red square appears\na purple triangle spins";
  $("top-k").value = "3";
  $("c2f").value = "false";
  created.find((n) => n.dataset.id === "amber").listeners.click();
  await $("query-form").listeners.submit({ preventDefault() {} });
  $("upload-file").listeners.change({ target: { files: [{ name: "clip.mp4" }] } });
  await $("query-form").listeners.submit({ preventDefault() {} });
  const grounds = sent.filter((s) => s.path === "/ground").map(({ options }) =>
    options.body instanceof FormData
      ? { form: options.body.items.filter(([k]) => k !== "file") }
      : { headers: options.headers, json: options.body });
  process.stdout.write(JSON.stringify(grounds));
})();
