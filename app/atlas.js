// The interactive map (runs as a gr.HTML js_on_load: `element`, `server`, `trigger` are given).
// Plotly draws at most a few thousand points for the window on screen; the server sends a density picture of
// the rest. Pan or zoom asks the server for the new window. Box or lasso sends the region to the server, which
// finds every sample inside it (not just the drawn ones) and opens them as a gallery below.
// Caption text is untrusted: it only ever reaches the page through textContent.
(function () {
  const root = element.querySelector(".atlas");
  const plot = root.querySelector(".atlas-plot");
  const hover = root.querySelector(".atlas-hover");
  const legend = root.querySelector(".atlas-legend");
  const status = root.querySelector(".atlas-status");
  const colour = root.querySelector(".atlas-colour");
  const webgl = (() => { try { return !!document.createElement("canvas").getContext("webgl"); } catch (e) { return false; } })();
  let started = false, busy = 0, points = null, timer = null, hovered = null;
  const details = new Map();  // sample id -> hover card data, asked for once
  root.dataset.state = "waiting";

  function box() {
    const full = plot._fullLayout;
    if (!full || !full.xaxis) return null;
    return [full.xaxis.range[0], full.xaxis.range[1], full.yaxis.range[0], full.yaxis.range[1]];
  }

  async function load(window) {
    const ticket = ++busy;
    root.dataset.state = "loading";
    let data;
    try {
      data = await server.view(window, colour.value, plot.clientWidth, plot.clientHeight);
    } catch (err) {
      status.textContent = "the map could not load: " + err;
      root.dataset.state = "error";
      return;
    }
    if (ticket !== busy) return;  // a newer pan or zoom is on its way
    if (data.error) { status.textContent = data.error; root.dataset.state = "error"; return; }
    draw(data);
  }

  function draw(d) {
    const p = d.points;
    points = p;
    const dense = d.density !== null;
    const trace = {
      type: webgl ? "scattergl" : "scatter", mode: "markers", x: p.x, y: p.y, customdata: p.id,
      marker: {color: p.colour, size: dense ? 4 : 7, opacity: dense ? 0.55 : 0.9,
               line: {width: dense ? 0 : 0.5, color: "#ffffff"}},
      hoverinfo: "none", selected: {marker: {opacity: 1}}, unselected: {marker: {opacity: dense ? 0.35 : 0.5}},
    };
    const [x0, x1, y0, y1] = d.box;
    const layout = {
      margin: {l: 36, r: 8, t: 8, b: 28}, dragmode: root.dataset.dragmode || "lasso", hovermode: "closest",
      xaxis: {range: [x0, x1], zeroline: false, showgrid: false}, yaxis: {range: [y0, y1], zeroline: false, showgrid: false},
      images: dense ? [{source: d.density, xref: "x", yref: "y", x: x0, y: y1, sizex: x1 - x0, sizey: y1 - y0,
                        sizing: "stretch", layer: "below"}] : [],
      annotations: d.labels.map(l => ({x: l.x, y: l.y, text: l.text, showarrow: false, font: {size: 11, color: "#222"},
                                        bgcolor: "rgba(255,255,255,0.75)", borderpad: 2})),
      showlegend: false, plot_bgcolor: "#fafaf8", paper_bgcolor: "#ffffff",
    };
    const config = {displaylogo: false, scrollZoom: true, responsive: true,
                    modeBarButtonsToRemove: ["toImage", "autoScale2d", "resetScale2d"]};
    Plotly.react(plot, [trace], layout, config).then(() => {
      root.dataset.state = "ready";
      root.dataset.inView = d.in_view;
      root.dataset.shown = d.shown;
    });
    status.textContent = `${d.in_view.toLocaleString()} of ${d.total.toLocaleString()} samples in view · ` +
      (dense ? `${d.shown.toLocaleString()} drawn as points, the density picture shows all of them`
             : "all drawn as points") + " · drag to select (box or lasso in the toolbar), scroll to zoom";
    drawLegend(d.legend);
  }

  function drawLegend(spec) {
    legend.replaceChildren();
    const title = document.createElement("div");
    title.className = "atlas-legend-title";
    title.textContent = spec.title;
    legend.appendChild(title);
    if (spec.kind === "ramp") {
      const bar = document.createElement("div");
      bar.className = "atlas-ramp";
      bar.style.background = `linear-gradient(to right, ${spec.stops.join(", ")})`;
      const ends = document.createElement("div");
      ends.className = "atlas-ramp-ends";
      for (const text of [String(spec.lo), spec.better, String(spec.hi)]) {
        const span = document.createElement("span");
        span.textContent = text;
        ends.appendChild(span);
      }
      const none = document.createElement("div");
      none.className = "atlas-note";
      none.textContent = spec.none;
      legend.append(bar, ends, none);
    } else if (spec.items.length === 0) {
      const note = document.createElement("div");
      note.className = "atlas-note";
      note.textContent = "each colour is a cluster; its number and top terms are written on the map";
      legend.appendChild(note);
    } else {
      for (const [name, hex] of spec.items) {
        const item = document.createElement("span");
        item.className = "atlas-key";
        const dot = document.createElement("i");
        dot.style.background = hex;
        item.append(dot, document.createTextNode(name));
        legend.appendChild(item);
      }
    }
  }

  async function showHover(ev) {
    const pt = ev.points && ev.points[0];
    if (!pt || !points) return;
    const id = points.id[pt.pointIndex];
    hovered = id;
    const rect = root.getBoundingClientRect();
    const x = ev.event.clientX - rect.left, y = ev.event.clientY - rect.top;
    if (!details.has(id)) details.set(id, await server.hover(id));
    if (hovered !== id) return;  // the pointer moved on while the server answered
    const d = details.get(id);
    hover.replaceChildren();
    const img = document.createElement("img");
    if (d.thumb_url) img.src = d.thumb_url;
    const text = document.createElement("div");
    text.textContent = d.error ? d.error : `#${d.id} · cluster ${d.cluster} · reward ${d.reward ?? "–"}\n` +
      (d.alt || "(no alt-text)");
    hover.append(img, text);
    hover.style.left = Math.min(x + 14, rect.width - 250) + "px";
    hover.style.top = Math.max(y - 40, 0) + "px";
    hover.style.display = "block";
  }

  function wire() {
    plot.on("plotly_relayout", ev => {
      if (!ev || !(("xaxis.range[0]" in ev) || ("xaxis.autorange" in ev) || ("yaxis.range[0]" in ev))) return;
      clearTimeout(timer);
      timer = setTimeout(() => load("xaxis.autorange" in ev ? null : box()), 120);
    });
    plot.on("plotly_hover", showHover);
    plot.on("plotly_unhover", () => { hovered = null; hover.style.display = "none"; });
    plot.on("plotly_selected", ev => {
      if (!ev) return;
      if (ev.lassoPoints) trigger("region", {lasso: {x: ev.lassoPoints.x, y: ev.lassoPoints.y}, drawn: ev.points.length});
      else if (ev.range) trigger("region", {box: [ev.range.x[0], ev.range.x[1], ev.range.y[0], ev.range.y[1]],
                                            drawn: ev.points.length});
    });
    plot.on("plotly_click", ev => {
      const pt = ev.points && ev.points[0];
      if (pt) trigger("pick", {id: pt.customdata});
    });
    plot.on("plotly_doubleclick", () => load(null));
  }

  // plotly.min.js (4.8 MB) is not part of the page load: the page starts fetching it shortly after it shows
  // (PREFETCH_JS in atlas_ui.py), and the map waits for that script, or adds it if the map is opened first
  let script = null;
  function fetchPlotly() {
    if (script || typeof Plotly !== "undefined") return;
    script = document.querySelector("script[data-altlens-plotly]");
    if (!script) {
      script = document.createElement("script");
      script.src = root.dataset.plotly;
      script.dataset.altlensPlotly = "1";
      document.head.appendChild(script);
    }
    script.addEventListener("load", start);
    script.addEventListener("error", () => { status.textContent = "could not load plotly.min.js from the server"; });
  }
  function start() {
    if (started || plot.clientWidth === 0) return;
    if (typeof Plotly === "undefined") { fetchPlotly(); return; }
    started = true;
    load(null).then(wire);
  }
  colour.addEventListener("change", () => load(started ? box() : null));
  root.querySelectorAll("button[data-mode]").forEach(b => b.addEventListener("click", () => {
    root.dataset.dragmode = b.dataset.mode;
    if (started) Plotly.relayout(plot, {dragmode: b.dataset.mode});
  }));
  root.querySelector("button.atlas-reset").addEventListener("click", () => load(null));
  new ResizeObserver(() => { start(); if (started) Plotly.Plots.resize(plot); }).observe(plot);
  const poll = setInterval(() => { if (started) clearInterval(poll); else start(); }, 200);
})();
