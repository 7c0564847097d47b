// The live view: watch an allow-listed stream for standing queries. One lane per query; an
// occurrence is drawn on the stream's time line as its events arrive, and the lane lights up
// while one is open. Server text is inserted with textContent only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const live = { id: null, events: null, lanes: new Map(), endSec: 1 };

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function say(text, isError = false) {
    $("live-status").textContent = text;
    $("live-status").classList.toggle("error", isError);
  }

  async function call(path, options = {}) {
    const response = await fetch(path, options);
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(`${response.status} ${body.error}`);
    return body;
  }

  async function loadSources() {
    const { allowed_sources: sources = [] } = await call("/streams");
    const select = $("live-source");
    select.replaceChildren(...sources.map((s) => Object.assign(node("option", "", s), { value: s })));
    $("live-start").disabled = !sources.length;
    if (!sources.length) say("no live sources: start the server with --allow-source");
  }

  function lane(query) {
    if (!live.lanes.has(query)) {
      const row = node("div", "lane");
      row.dataset.query = query;
      const bar = node("div", "bar");
      row.append(node("span", "query", query), bar);
      $("live-lanes").append(row);
      live.lanes.set(query, { row, bar, occurrences: [] });
    }
    return live.lanes.get(query);
  }

  function draw() {
    for (const { row, bar, occurrences } of live.lanes.values()) {
      bar.replaceChildren();
      for (const o of occurrences) {
        const box = node("div", o.open ? "occurrence open" : "occurrence");
        box.style.left = `${(100 * o.start) / live.endSec}%`;
        box.style.width = `${Math.max(0.5, (100 * (o.end - o.start)) / live.endSec)}%`;
        box.dataset.start = o.start;
        box.dataset.end = o.end;
        box.title = `${o.start.toFixed(1)}-${o.end.toFixed(1)} s, presence ${o.presence.toFixed(2)}`;
        bar.append(box);
      }
      row.classList.toggle("lit", occurrences.some((o) => o.open));
    }
  }

  function onEvent(event) {
    live.endSec = Math.max(live.endSec, event.stream_time);
    if (event.query === null) {
      say(`${event.state} at ${event.stream_time.toFixed(1)} s${event.detail ? `: ${event.detail}` : ""}`,
        event.state === "failed");
      if (event.state === "stopped") finish();
    } else {
      const { occurrences } = lane(event.query);
      if (event.state === "started") occurrences.push({ open: true });
      const o = occurrences[occurrences.length - 1];
      if (o) Object.assign(o, { start: event.start_sec, end: event.end_sec, presence: event.presence,
        open: event.state !== "ended" });
    }
    draw();
  }

  function finish() {
    if (live.events) live.events.close(); // else EventSource reconnects and replays
    live.events = null;
    $("live-stop").disabled = true;
    $("live-start").disabled = false;
  }

  async function start() {
    const queries = $("live-queries").value.split("\n").map((q) => q.trim()).filter(Boolean);
    if (!queries.length) return say("type one standing query per line", true);
    live.lanes.clear();
    live.endSec = 1;
    $("live-lanes").replaceChildren();
    queries.forEach(lane);
    try {
      const stream = await call("/streams", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ source: $("live-source").value, queries, speed: Number($("live-speed").value) }),
      });
      live.id = stream.id;
      $("live-start").disabled = true;
      $("live-stop").disabled = false;
      say(`watching ${stream.source}`);
      live.events = new EventSource(`/streams/${encodeURIComponent(stream.id)}/events`);
      live.events.onmessage = (message) => onEvent(JSON.parse(message.data));
    } catch (error) {
      say(error.message, true);
    }
  }

  async function stop() {
    if (live.id) await call(`/streams/${encodeURIComponent(live.id)}`, { method: "DELETE" }).catch(() => {});
  }

  $("live-start").addEventListener("click", start);
  $("live-stop").addEventListener("click", stop);
  loadSources().catch((error) => say(error.message, true));
})();
