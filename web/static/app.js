// plinth web UI: small progressive enhancements; every page works without them.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  bulkSelection();
  liveTimeline();
  freeSlots();
  confirmButtons();
});

// The machine table: "select all", the count, bulk buttons enabled only with a selection.
function bulkSelection() {
  const form = document.getElementById("bulk-form");
  if (!form) return;
  const boxes = () => Array.from(form.querySelectorAll('input[name="id"]'));
  const all = document.getElementById("select-all");
  const count = document.getElementById("selected-count");
  const update = () => {
    const n = boxes().filter((b) => b.checked).length;
    if (count) count.textContent = String(n);
    form.querySelectorAll("[data-needs-selection]").forEach((b) => { b.disabled = n === 0; });
    if (all) all.checked = n > 0 && n === boxes().length;
  };
  if (all) all.addEventListener("change", () => { boxes().forEach((b) => { b.checked = all.checked; }); update(); });
  form.addEventListener("change", update);
  update();
}

// A machine page's timeline follows the machine's events: an EventSource on the timeline
// stream refreshes it whenever an event comes (and once on connecting, for what happened
// before); when the state changes, the whole page reloads (its actions change with it).
// Without EventSource, or when the stream is refused, it polls every 2 s while the machine
// is busy, 10 s otherwise. Without JavaScript the page is as rendered.
function liveTimeline() {
  const box = document.getElementById("timeline");
  if (!box || !box.dataset.src) return;
  const first = box.querySelector("ul.timeline");
  const state = first ? first.dataset.state : "";
  let busy = false;
  let again = false;
  const tick = async () => {
    if (document.hidden) { again = true; return; }
    if (busy) { again = true; return; }
    busy = true;
    again = false;
    try {
      const res = await fetch(box.dataset.src, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (res.status === 401) { window.location.reload(); return; }
      if (!res.ok) return;
      const html = await res.text();
      const tmp = document.createElement("div");
      tmp.innerHTML = html;
      const list = tmp.querySelector("ul.timeline");
      if (!list) return;
      if (list.dataset.state !== state) { window.location.reload(); return; }
      box.replaceChildren(list);
    } catch (e) {
      // the server is away for a moment: the next event or tick tries again
    } finally {
      busy = false;
      if (again) setTimeout(tick, 100);
    }
  };
  document.addEventListener("visibilitychange", () => { if (!document.hidden && again) tick(); });
  const poll = () => setInterval(tick, box.dataset.live === "yes" ? 2000 : 10000);
  if (!window.EventSource || !box.dataset.stream) { poll(); return; }
  const es = new EventSource(box.dataset.stream);
  es.onopen = () => { box.dataset.streaming = "yes"; tick(); };
  es.onmessage = () => tick();
  es.onerror = () => {
    box.dataset.streaming = "no";
    // The browser reconnects by itself (with Last-Event-ID) unless the answer was not a
    // stream at all (signed out, refused): then the page polls as before.
    if (es.readyState === EventSource.CLOSED) poll();
  };
}

// The enrollment form: the positions offered follow the rack and the height chosen.
function freeSlots() {
  const rack = document.getElementById("rack");
  const size = document.getElementById("size_u");
  const unit = document.getElementById("unit");
  if (!rack || !size || !unit || !rack.dataset.freeSlots) return;
  // The options change only when the answer is there, keeping what the user picked meanwhile
  // if it is still free; an answer that a newer request overtook is dropped.
  let seq = 0;
  const fill = (units, empty) => {
    const keep = unit.value;
    unit.replaceChildren();
    if (units.length === 0) unit.append(new Option(empty, ""));
    for (const u of units) unit.append(new Option("U" + u, String(u), false, String(u) === keep));
  };
  const refresh = async () => {
    const mine = ++seq;
    if (!rack.value) {
      fill([], "choose a rack first");
      return;
    }
    const q = new URLSearchParams({ rack: rack.value, size_u: size.value || "1" });
    try {
      const res = await fetch(rack.dataset.freeSlots + "?" + q, { credentials: "same-origin" });
      const units = res.ok ? await res.json() : [];
      if (mine === seq) fill(units, "no free position of this height");
    } catch (e) {
      if (mine === seq) fill([], "could not load the free positions");
    }
  };
  rack.addEventListener("change", refresh);
  size.addEventListener("change", refresh);
}

function confirmButtons() {
  document.querySelectorAll("button[data-confirm]").forEach((b) => {
    b.addEventListener("click", (ev) => {
      if (!window.confirm(b.dataset.confirm)) ev.preventDefault();
    });
  });
}
