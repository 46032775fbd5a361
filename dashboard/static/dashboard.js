// The live dashboard: polls /api/summary and /api/recent, draws with uPlot (vendored).
"use strict";
(function () {
  const refreshMs = Number(document.body.dataset.refreshMs) || 2000;
  const recentN = Number(document.body.dataset.recent) || 12;
  const $ = (id) => document.getElementById(id);
  const charts = {};

  function fmt(value, digits) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    return Number(value).toLocaleString("en-US", {maximumFractionDigits: digits, minimumFractionDigits: 0});
  }

  function chart(id, series, unitScale) {
    const el = $(id);
    const opts = {
      width: Math.max(el.clientWidth, 300), height: 200,
      scales: {x: {time: true, range: (u, min, max) => [Math.min(min, max - 120), max]}},
      axes: [{stroke: "#8b95a5", grid: {stroke: "#2a3340"}}, {stroke: "#8b95a5", grid: {stroke: "#2a3340"}}],
      series: [{}].concat(series.map(([label, color]) => ({label: label, stroke: color, width: 2,
                                                            points: {show: false},
                                                            value: (u, v) => fmt(v, 1)}))),
    };
    charts[id] = {plot: new uPlot(opts, [[]].concat(series.map(() => [])), el), scale: unitScale};
  }

  function align(seriesList, scale) {
    // One x axis (the union of the timestamps), each series' values on it.
    // Every 5 s step from the first point to the last: a gap in the data stays a gap.
    const all = [].concat(...seriesList.map((s) => s.map((p) => p[0])));
    const xs = [];
    if (all.length) for (let x = Math.min(...all); x <= Math.max(...all); x += 5) xs.push(x);
    const data = [xs];
    for (const s of seriesList) {
      const m = new Map(s.map((p) => [p[0], p[1] === null ? null : p[1] * scale]));
      data.push(xs.map((x) => (m.has(x) ? m.get(x) : null)));
    }
    return data;
  }

  function setStatus(text, ok) {
    const s = $("status");
    s.textContent = text;
    s.className = "status " + (ok ? "ok" : "bad");
  }

  async function getJSON(url) {
    const resp = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
    return resp.json();
  }

  async function refreshSummary() {
    const s = await getJSON("/api/summary");
    $("throughput").textContent = fmt(s.throughput, 1);
    for (const q of ["p50", "p95", "p99"]) $(q).textContent = fmt(s[q] === null ? null : s[q] * 1000, 0);
    $("lag").textContent = fmt(s.lag, 0);
    $("dead_letters").textContent = fmt(s.dead_letters, 0);
    $("stored").textContent = fmt(s.stored, 0);
    charts["chart-throughput"].plot.setData(align([s.series.throughput], 1));
    charts["chart-latency"].plot.setData(align([s.series.p50, s.series.p95, s.series.p99], 1000));
    const when = new Date(s.time * 1000).toLocaleTimeString();
    if (s.errors.length) setStatus("partial: " + s.errors.join(", ") + " · " + when, false);
    else setStatus("live · " + when, true);
  }

  async function refreshRecent() {
    const r = await getJSON("/api/recent?n=" + recentN);
    const box = $("recent");
    const cards = r.images.map((img) => {
      const div = document.createElement("div");
      div.className = "thumb";
      div.dataset.imageId = img.image_id;
      const pic = document.createElement("img");
      pic.src = img.thumbnail || "";
      pic.alt = img.prediction || "";
      const pred = document.createElement("div");
      pred.className = "pred";
      pred.textContent = img.prediction;
      const conf = document.createElement("div");
      conf.className = "conf";
      conf.textContent = fmt((img.confidence || 0) * 100, 1) + " %";
      const truth = document.createElement("div");
      truth.className = "truth " + (img.label === null ? "" : (img.label === img.prediction ? "match" : "miss"));
      truth.textContent = "truth: " + (img.label === null ? "–" : img.label);
      div.append(pic, pred, conf, truth);
      return div;
    });
    box.replaceChildren(...cards);
  }

  async function tick() {
    try {
      await Promise.all([refreshSummary(), refreshRecent()]);
    } catch (err) {
      setStatus("error: " + err.message, false);
    } finally {
      setTimeout(tick, refreshMs);
    }
  }

  chart("chart-throughput", [["stored / s", "#4fb3ff"]], 1);
  chart("chart-latency", [["p50", "#3ecf8e"], ["p95", "#ffb84f"], ["p99", "#ff6b6b"]], 1000);
  window.addEventListener("resize", () => {
    for (const id in charts) charts[id].plot.setSize({width: Math.max($(id).clientWidth, 300), height: 200});
  });
  tick();
})();
