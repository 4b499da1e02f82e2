// The live views of `edge web` (edge/web/app.py): one script for the line (/), the big screen
// (/screen), a job (/job/<id>) and a visitor's own page (/O/<order>). Each page starts from the
// view embedded in it, then re-renders the whole view from every `view` event of its
// Server-Sent Events stream: a reconnecting page needs no history.
//
// Offline: the server sends `link` (the broker up, or down since when) in every view, and a
// `tick` every 5 s when nothing changes. A banner "Offline since 14:02" replaces the live data
// when the broker is down, or when the stream itself is gone (an error, or no word for 16 s);
// in the cloud, "The trailer is offline since 14:02" when the trailer's uplink is down.
// EventSource reconnects by itself; a stream it gave up on is opened again here.
"use strict";
(function () {
  const body = document.body;
  const page = body.dataset.view; // line | screen | job | visitor
  const DEAD_MS = 16000; // three missed ticks
  // The big screen shows each job this long: /screen?cycle=10 for 10 s.
  const CYCLE_MS = 1000 * (Number(new URLSearchParams(location.search).get("cycle")) || 6);
  let view = JSON.parse(document.getElementById("initial").textContent);
  let heardAt = Date.now();
  let deadSince = null; // the stream is gone: the last time we heard from the server

  const STATE = { idle: "Waiting", busy: "Working", fault: "Fault", manual: "Manual", estop: "Emergency stop",
    offline: "Offline" };
  const STATUS = { unknown: "On the line", waiting: "Waiting for the line", in_progress: "On the line",
    done: "Ready", completed: "Handed over", failed: "Stopped: the team is on it", cancelled: "Cancelled" };
  const STEP = { pending: "to do", running: "now", done: "done", failed: "stopped", skipped: "skipped" };
  const VERDICT = { pass: "passed", reject: "did not pass: the team will look at it",
    retake: "another picture follows" };

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "style") for (const [p, x] of Object.entries(v)) el.style.setProperty(p, x);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid !== null && kid !== undefined && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  const capital = (text) => text.charAt(0).toUpperCase() + text.slice(1);
  const pad = (n) => String(n).padStart(2, "0");
  const hhmm = (ms) => { const d = new Date(ms); return pad(d.getHours()) + ":" + pad(d.getMinutes()); };
  const hms = (ms) => hhmm(ms) + ":" + pad(new Date(ms).getSeconds());
  function took(from, to) {
    const s = Math.max(0, Math.round((to - from) / 1000));
    return s < 60 ? s + " s" : Math.floor(s / 60) + " min " + pad(s % 60) + " s";
  }

  // ------------------------------------------------------------------ pieces

  const swatch = (rgb) => (rgb ? h("span", { class: "swatch", style: { "--c": rgb } }) : null);
  const bar = (p) => (p === null || p === undefined ? null
    : h("div", { class: "bar", role: "progressbar", "aria-valuenow": p, "aria-valuemin": 0, "aria-valuemax": 100 },
      h("span", { style: { width: p + "%" } })));

  function jobChip(j) {
    return h("a", { class: "chip", href: "/job/" + j.id, dataset: { job: j.id } },
      swatch(j.colour_rgb), h("b", { class: "name" }, j.name || "\u00b7"), h("code", {}, j.id));
  }

  function where(j) {
    const running = j.steps.find((s) => s.status === "running");
    if (running) return "at " + running.title;
    if ((j.status === "in_progress" || j.status === "waiting") && j.station_title) return "next: " + j.station_title;
    return STATUS[j.status] || j.status;
  }

  function dots(j) {
    return h("ol", { class: "dots" }, j.steps.map((s) =>
      h("li", { class: "dot " + s.status, title: s.title + ": " + STEP[s.status], dataset: { step: s.step, status: s.status } })));
  }

  function stepTimes(s) {
    if (s.started_ms && s.ended_ms) return hms(s.started_ms) + " \u2013 " + hms(s.ended_ms) + " (" + took(s.started_ms, s.ended_ms) + ")";
    if (s.started_ms) return "since " + hms(s.started_ms);
    return "";
  }

  function stepRow(s) {
    const what = STEP[s.status] + (s.status === "running" && s.progress !== null ? " " + s.progress + " %" : "");
    return h("li", { class: "step " + s.status, dataset: { step: s.step, status: s.status } },
      h("span", { class: "step-title" }, s.title), h("span", { class: "step-status" }, what),
      h("span", { class: "step-time" }, stepTimes(s)));
  }

  // ------------------------------------------------------------------ the line

  function nodeRow(n) {
    return h("div", { class: "node state-" + n.state, dataset: { node: n.node, state: n.state } },
      h("span", { class: "node-name" }, n.node),
      h("span", { class: "node-state" }, STATE[n.state] || n.state, n.mode === "manual" && n.state !== "manual" ? " (manual)" : ""),
      n.job ? jobChip(n.job) : null,
      n.state === "busy" ? bar(n.progress) : null,
      n.tripped.length ? h("p", { class: "tripped" }, "Safety circuit open: " + n.tripped.join(", ")) : null);
  }

  function stationCard(st) {
    return h("article", { class: "station state-" + st.state, dataset: { kind: st.kind, state: st.state } },
      h("header", {}, h("h2", {}, st.title), h("span", { class: "state fresh" }, STATE[st.state] || st.state)),
      h("div", { class: "nodes fresh" }, st.nodes.length ? st.nodes.map(nodeRow) : h("p", { class: "empty" }, "No station online")),
      st.about ? h("p", { class: "about" }, st.about) : null,
      st.trades.length ? h("div", { class: "trades" }, h("h3", {}, "The trades behind it"),
        h("ul", {}, st.trades.map((t) => h("li", {}, t)))) : null);
  }

  function jobRow(j) {
    return h("li", { class: "job status-" + j.status, dataset: { job: j.id, status: j.status } },
      jobChip(j), h("span", { class: "product" }, j.product_title), dots(j), h("span", { class: "where" }, where(j)));
  }

  function renderLine() {
    const trades = view.stations.reduce((n, st) => n + st.trades.length, 0);
    live().replaceChildren(
      h("p", { class: "intro" }, view.stations.length + " stations make each stand while you watch. Behind them: ",
        h("b", {}, trades + " trades"), ", from design to recycling."),
      h("section", { class: "stations" }, view.stations.map(stationCard)),
      h("section", { class: "jobs fresh" }, h("h2", {}, "On the line"),
        view.jobs.length ? h("ul", { class: "job-list" }, view.jobs.map(jobRow))
          : h("p", { class: "empty" }, "No stand on the line right now."),
        view.finished.length ? [h("h3", {}, "Just finished"), h("ul", { class: "job-list finished" }, view.finished.map(jobRow))] : null));
  }

  // ------------------------------------------------------------------ the big screen

  let spotId = null;

  function spotlight(j, i, n) {
    return h("div", { class: "spot status-" + j.status, dataset: { job: j.id, status: j.status } },
      h("p", { class: "spot-count" }, (i + 1) + " / " + n),
      h("h1", { class: "spot-name" }, swatch(j.colour_rgb), j.name || "\u00b7"),
      h("p", { class: "spot-what" }, j.product_title, " ", h("code", {}, j.id)),
      h("p", { class: "spot-where" }, capital(where(j))),
      bar(j.progress),
      h("ol", { class: "spot-steps" }, j.steps.map((s) => h("li", { class: "step " + s.status, dataset: { step: s.step, status: s.status } },
        h("span", { class: "step-title" }, s.title),
        h("span", { class: "step-status" }, s.status === "running" && s.progress !== null ? s.progress + " %" : STEP[s.status])))));
  }

  function renderScreen() {
    const jobs = view.jobs;
    let i = Math.max(0, jobs.findIndex((j) => j.id === spotId));
    if (jobs.length) spotId = jobs[i].id;
    live().replaceChildren(
      h("section", { class: "spotlight fresh" }, jobs.length ? spotlight(jobs[i], i, jobs.length)
        : h("div", { class: "spot idle" }, h("h1", { class: "spot-name" }, view.line.title),
          h("p", { class: "spot-where" }, "Scan your QR code at the intake: your stand appears here."))),
      h("footer", { class: "strip" }, view.stations.map((st) => h("div", { class: "cell state-" + st.state, dataset: { kind: st.kind, state: st.state } },
        h("span", { class: "cell-title" }, st.title), h("span", { class: "cell-state fresh" }, STATE[st.state] || st.state),
        h("span", { class: "cell-jobs fresh" }, st.nodes.filter((n) => n.job).map((n) => jobChip(n.job)))))));
  }

  function nextSpot() {
    const jobs = view.jobs;
    if (jobs.length > 1) {
      const i = jobs.findIndex((j) => j.id === spotId);
      spotId = jobs[(i + 1) % jobs.length].id;
      renderScreen();
    }
  }

  // ------------------------------------------------------------------ one job, a visitor's own

  function headline(j) {
    const running = j.steps.find((s) => s.status === "running");
    if (running) return (page === "visitor" ? "Your stand is at " : "At ") + running.title + (running.progress !== null ? " (" + running.progress + " %)" : "");
    return STATUS[j.status] || j.status;
  }

  function snapshot(mine) {
    const shot = mine && mine.snapshot;
    if (!shot) return null;
    return h("figure", { class: "snapshot", dataset: { verdict: shot.verdict } },
      h("img", { src: shot.url, alt: "Your stand under the inspection camera" }),
      h("figcaption", {}, "Inspection at " + hms(shot.taken_ms) + ": " + (VERDICT[shot.verdict] || shot.verdict)));
  }

  function renderJob() {
    const j = view.job;
    if (!j) {
      live().replaceChildren(h("section", { class: "job fresh", dataset: { status: "absent" } }, h("p", { class: "headline" },
        page === "visitor" ? "Your stand is not on the line yet: scan your QR code at the intake."
          : "This stand is not on the line: not yet, or no longer.")));
      return;
    }
    const running = j.steps.find((s) => s.status === "running");
    const about = running ? view.job.station_about : null;
    live().replaceChildren(h("section", { class: "job fresh status-" + j.status, dataset: { job: j.id, status: j.status } },
      page === "job" ? h("h1", { class: "job-title" }, swatch(j.colour_rgb), j.name || "\u00b7", " ", h("code", {}, j.id))
        : h("p", { class: "kicker" }, "Stand ", h("code", {}, j.id)),
      h("p", { class: "headline" }, headline(j)),
      about ? h("p", { class: "about" }, about) : null,
      bar(j.progress),
      h("ol", { class: "steps" }, j.steps.map(stepRow)),
      page === "visitor" ? snapshot(view.mine) : null));
  }

  // ------------------------------------------------------------------ live

  const live = () => document.getElementById("live");

  function banner() {
    let text = "";
    if (deadSince !== null) text = "Offline since " + hhmm(deadSince);
    else if (view.link.state === "connecting") text = "Connecting to the line\u2026";
    else if (!view.link.up) {
      text = (view.link.trailer === "down" ? "The trailer is offline since " : "Offline since ") + hhmm(view.link.since_ms);
    }
    const el = document.getElementById("banner");
    el.textContent = text;
    el.hidden = !text;
    body.classList.toggle("is-offline", !!text);
  }

  function render() {
    if (page === "line") renderLine();
    else if (page === "screen") renderScreen();
    else renderJob();
    banner();
  }

  function alive() {
    heardAt = Date.now();
    if (deadSince !== null) {
      deadSince = null;
      banner();
    }
  }

  function connect() {
    const source = new EventSource(body.dataset.stream);
    source.addEventListener("view", (e) => { view = JSON.parse(e.data); alive(); render(); });
    source.addEventListener("tick", alive);
    source.onerror = () => {
      if (deadSince === null) { deadSince = heardAt; banner(); }
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    };
  }

  setInterval(() => {
    if (deadSince === null && Date.now() - heardAt > DEAD_MS) { deadSince = heardAt; banner(); }
  }, 1000);
  if (page === "screen") setInterval(nextSpot, CYCLE_MS);
  render();
  connect();
})();
