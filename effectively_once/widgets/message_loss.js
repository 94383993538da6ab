// The browser half of MessageLossWidget (effectively_once/widgets/message_loss.py).
//
// Python sends the drawing of every event (`events`), the counters after each step
// (`frames`) and the summary chart (`summary`). Each view draws the lanes, moves a token
// along each new arrow with requestAnimationFrame (a round one for a message, a square one
// for an ack or a commit) and makes a lost one vanish at its cross. While `playing`, one
// timer per widget model (in `initialize`, not in `render`) advances `step`: however many
// views show the widget, it plays at `speed_ms` per step, with no kernel round trip per frame.
// With prefers-reduced-motion, nothing glides: each step's row appears at once.

const SVG = "http://www.w3.org/2000/svg";
const GLYPHS = { cross: "\u2717", cycle: "\u21bb", dot: "\u25cf" };

function svgEl(tag, attrs, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function htmlEl(tag, attrs, parent) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function easeInOut(t) {
  return t < 0.5 ? 2 * t * t : 1 - Math.pow(-2 * t + 2, 2) / 2;
}

function reducedMotion() {
  return Boolean(window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches);
}

// Once per widget model, however many views it has: the clock that plays it.
function initialize({ model }) {
  let timer = null;

  function tick() {
    const n = model.get("events").length;
    const step = model.get("step");
    if (step >= n) {
      model.set("playing", false);
    } else {
      model.set("step", Math.min(step + 1, n));
    }
    model.save_changes();
  }

  function syncTimer() {
    if (timer !== null) clearInterval(timer);
    timer = null;
    if (model.get("playing")) timer = setInterval(tick, Math.max(50, model.get("speed_ms")));
  }

  model.on("change:playing", syncTimer);
  model.on("change:speed_ms", syncTimer);
  syncTimer();
  return () => {
    if (timer !== null) clearInterval(timer);
  };
}

function render({ model, el }) {
  const L = model.get("layout_info");
  const height = L.top + L.row * L.visible_rows;
  el.classList.add("eo-message-loss-animation");
  el.style.fontFamily = "sans-serif";

  const bar = htmlEl("div", { style: "display:flex;gap:8px;align-items:center;margin:6px 0" }, el);
  const rewind = htmlEl("button", { class: "eo-rewind", title: "back to step 0" }, bar);
  rewind.textContent = "rewind";
  const playButton = htmlEl("button", { class: "eo-play" }, bar);
  const stepButton = htmlEl("button", { class: "eo-step", title: "one event" }, bar);
  stepButton.textContent = "step +1";
  const endButton = htmlEl("button", { class: "eo-end", title: "the last step, and the summary of all four" }, bar);
  endButton.textContent = "last step";
  const scrub = htmlEl("input", { type: "range", min: 0, step: 1, class: "eo-scrub", style: "width:260px" }, bar);
  const status = htmlEl("span", { class: "eo-status", style: "font-size:12px" }, bar);

  // The diagram shrinks before the counters move below it: both stay in view together.
  const body = htmlEl("div", { style: "display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start" }, el);
  const diagram = htmlEl("div", { style: `flex:1 1 460px;min-width:0;max-width:${L.width}px` }, body);
  const svg = svgEl("svg", {
    width: L.width, height, viewBox: `0 0 ${L.width} ${height}`, "font-family": "sans-serif",
    "font-size": 12, class: "eo-message-loss", style: "width:100%;height:auto;display:block",
  }, diagram);
  const counterBox = htmlEl("div", { class: "eo-counters", style: "flex:0 0 auto;font-size:12px" }, body);
  const summaryBox = htmlEl("div", { class: "eo-summary-box", style: "margin-top:8px;font-size:12px" }, el);

  const defs = svgEl("defs", {}, svg);
  const marker = svgEl("marker", {
    id: "eo-ml-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6,
    orient: "auto-start-reverse",
  }, defs);
  svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#555" }, marker);
  svgEl("rect", { width: L.width, height, fill: "white" }, svg);
  for (const [lane, x] of L.lanes) {
    const t = svgEl("text", { x, y: 34, "text-anchor": "middle", "font-weight": "bold" }, svg);
    t.textContent = lane;
    svgEl("line", { x1: x, y1: 40, x2: x, y2: height - 4, stroke: "#bbb", "stroke-dasharray": "4 3" }, svg);
  }
  const rows = svgEl("g", { class: "eo-rows" }, svg);

  let frameRequest = null;
  let shownStep = -1;

  function drawRow(d, y, parent) {
    const g = svgEl("g", {}, parent);
    let line = null;
    let cross = null;
    if (d.glyph) {
      const colour = d.glyph === "cross" ? L.colours.cross : d.colour;
      const t = svgEl("text", {
        x: d.x1, y: y + 5, "text-anchor": "middle", fill: colour, "font-size": 16, "font-weight": "bold",
        class: "eo-glyph",
      }, g);
      t.textContent = GLYPHS[d.glyph];
    } else {
      line = svgEl("line", {
        x1: d.x1, y1: y, x2: d.x2, y2: y, stroke: d.colour, "stroke-width": 2,
      }, g);
      if (d.dashed) line.setAttribute("stroke-dasharray", "5 3");
      if (!d.lost) line.setAttribute("marker-end", "url(#eo-ml-arrow)");
      if (d.lost) {
        cross = svgEl("text", {
          x: d.x2, y: y + 5, "text-anchor": "middle", fill: L.colours.cross, "font-size": 16,
          "font-weight": "bold", class: "eo-cross",
        }, g);
        cross.textContent = GLYPHS.cross;
      }
    }
    const label = svgEl("text", { x: L.label_x, y: y + 4, fill: d.colour, "font-size": 11 }, g);
    label.textContent = d.label;
    return { g, line, cross, label };
  }

  function animateRow(d, y, parts) {
    // The newest row: a token travels from x1 to x2 while the line grows behind it; a lost
    // token shrinks and fades at its cross, a delivered one hands over to the arrowhead.
    const duration = Math.max(80, 0.8 * model.get("speed_ms"));
    const arrive = d.lost ? 0.75 : 1.0;   // share of the time spent travelling
    let token = null;
    if (d.token === "message") {
      token = svgEl("circle", { cx: d.x1, cy: y, r: 6, fill: d.colour, class: "eo-token" }, parts.g);
    } else if (d.token) {
      token = svgEl("rect", { x: d.x1 - 5, y: y - 5, width: 10, height: 10, fill: d.colour, class: "eo-token" },
        parts.g);
    } else if (d.glyph === "cross" && d.x1 === d.x2) {
      // lost in the network: the message that just arrived there vanishes
      token = svgEl("circle", { cx: d.x1, cy: y, r: 6, fill: L.colours.normal, class: "eo-token" }, parts.g);
    }
    if (parts.line) {
      parts.line.setAttribute("x2", d.x1);
      parts.line.removeAttribute("marker-end");
    }
    if (parts.cross) parts.cross.setAttribute("opacity", 0);
    parts.label.setAttribute("opacity", 0);
    const glyph = parts.g.querySelector(".eo-glyph");
    const start = performance.now();
    function frame(now) {
      const t = Math.min(1, (now - start) / duration);
      const travel = easeInOut(Math.min(1, t / arrive));
      const x = d.x1 + (d.x2 - d.x1) * travel;
      if (parts.line) parts.line.setAttribute("x2", x.toFixed(1));
      if (token && d.token === "message") token.setAttribute("cx", x.toFixed(1));
      else if (token && d.token) token.setAttribute("x", (x - 5).toFixed(1));
      parts.label.setAttribute("opacity", Math.min(1, t * 2).toFixed(2));
      if (glyph) glyph.setAttribute("opacity", Math.min(1, t * 1.5).toFixed(2));
      if (d.lost && token) {
        const fade = Math.max(0, (t - arrive) / (1 - arrive || 1));
        if (t >= arrive && parts.cross) parts.cross.setAttribute("opacity", 1);
        if (!d.token) {
          // lost in the network: the message shrinks and fades where it is
          token.setAttribute("r", (6 * (1 - t)).toFixed(2));
          token.setAttribute("opacity", (1 - t).toFixed(2));
        } else {
          token.setAttribute("opacity", (1 - fade).toFixed(2));
        }
      }
      if (t < 1) {
        frameRequest = requestAnimationFrame(frame);
      } else {
        frameRequest = null;
        if (token) token.remove();
        if (parts.line && !d.lost) parts.line.setAttribute("marker-end", "url(#eo-ml-arrow)");
        if (parts.cross) parts.cross.setAttribute("opacity", 1);
        if (glyph) glyph.removeAttribute("opacity");
        parts.label.removeAttribute("opacity");
      }
    }
    frameRequest = requestAnimationFrame(frame);
  }

  function drawCounters(step) {
    const frames = model.get("frames");
    const values = frames[Math.min(step, frames.length - 1)] || {};
    counterBox.replaceChildren();
    const title = htmlEl("b", {}, counterBox);
    title.textContent = model.get("semantics");
    const table = htmlEl("table", {}, counterBox);
    for (const [name, value] of Object.entries(values)) {
      const tr = htmlEl("tr", {}, table);
      htmlEl("td", { style: "padding:1px 8px;white-space:nowrap" }, tr).textContent = name;
      const td = htmlEl("td", { style: "text-align:right;padding:1px 8px", class: "eo-counter", "data-name": name },
        tr);
      td.textContent = String(value);
    }
  }

  function draw(step, animate) {
    if (frameRequest !== null) cancelAnimationFrame(frameRequest);
    frameRequest = null;
    const events = model.get("events");
    const first = Math.max(0, step - L.visible_rows);
    rows.replaceChildren();
    let last = null;
    for (let i = first; i < step; i++) {
      const y = L.top + L.row * (i - first);
      last = { d: events[i], y, parts: drawRow(events[i], y, rows) };
    }
    if (animate && last && !reducedMotion()) animateRow(last.d, last.y, last.parts);
    drawCounters(step);
    scrub.max = events.length;
    scrub.value = step;
    status.textContent = `step ${step} of ${events.length}`;
    playButton.textContent = model.get("playing") ? "pause" : "\u25b6 play";
    if (step >= events.length && events.length > 0) {
      summaryBox.style.color = "";
      summaryBox.innerHTML = model.get("summary");
    } else {
      summaryBox.style.color = "#777";
      summaryBox.textContent = "The summary of all four semantics appears when the animation reaches its last step.";
    }
    shownStep = step;
  }

  function setStep(step) {
    const n = model.get("events").length;
    model.set("step", Math.max(0, Math.min(step, n)));
    model.save_changes();
  }

  function showPlaying() {
    playButton.textContent = model.get("playing") ? "pause" : "\u25b6 play";
  }

  playButton.addEventListener("click", () => {
    const playing = !model.get("playing");
    if (playing && model.get("step") >= model.get("events").length) model.set("step", 0);
    model.set("playing", playing);
    model.save_changes();
  });
  stepButton.addEventListener("click", () => setStep(model.get("step") + 1));
  rewind.addEventListener("click", () => {
    model.set("playing", false);
    setStep(0);
  });
  endButton.addEventListener("click", () => {
    model.set("playing", false);
    setStep(model.get("events").length);
  });
  scrub.addEventListener("input", () => {
    model.set("playing", false);
    setStep(Number(scrub.value));
  });

  const onStep = () => {
    const step = model.get("step");
    draw(step, step === shownStep + 1);
  };
  const onEvents = () => draw(model.get("step"), false);
  const listeners = [
    ["change:step", onStep], ["change:events", onEvents], ["change:frames", onEvents],
    ["change:summary", onEvents], ["change:playing", showPlaying],
  ];
  for (const [name, handler] of listeners) model.on(name, handler);
  draw(model.get("step"), false);
  showPlaying();

  return () => {
    if (frameRequest !== null) cancelAnimationFrame(frameRequest);
    for (const [name, handler] of listeners) model.off(name, handler);
  };
}

export default { initialize, render };
