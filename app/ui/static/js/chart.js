// A small SVG line chart: a few series of (x, y) points on shared axes, with ticks and a legend.

import { h, svg } from "./dom.js";

const W = 640;
const H = 260;
const PAD = { left: 56, right: 16, top: 16, bottom: 40 };

function ticks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 1e5)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

// series: [{name, points: [[x, y], ...], cls}]
export function lineChart(series, { xLabel = "step", yLabel = "loss", title = "" } = {}) {
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return h("p", { class: "muted chart-empty" }, "No points yet.");
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const margin = (y1 - y0) * 0.05;
  y0 -= margin;
  y1 += margin;
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);

  const grid = [];
  for (const t of ticks(y0, y1, 5)) {
    grid.push(svg("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: sy(t), y2: sy(t) }));
    grid.push(svg("text", { class: "tick", x: PAD.left - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  for (const t of ticks(x0, x1, 6)) {
    grid.push(svg("line", { class: "axis-tick", x1: sx(t), x2: sx(t), y1: H - PAD.bottom, y2: H - PAD.bottom + 4 }));
    grid.push(svg("text", { class: "tick", x: sx(t), y: H - PAD.bottom + 16, "text-anchor": "middle" }, fmt(t)));
  }
  const lines = series.filter((s) => s.points.length).map((s, i) => {
    const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
    const d = sorted.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    return svg("g", { class: `series ${s.cls || `s${i}`}`, "data-series": s.name },
      svg("polyline", { points: d }),
      sorted.map((p) => svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5 },
        svg("title", {}, `${s.name} at ${xLabel} ${p[0]}: ${fmt(p[1])}`))));
  });
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                             "aria-label": title || `${yLabel} by ${xLabel}` },
    grid,
    svg("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }),
    svg("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }),
    svg("text", { class: "axis-label", x: (PAD.left + W - PAD.right) / 2, y: H - 6, "text-anchor": "middle" }, xLabel),
    svg("text", { class: "axis-label", x: 14, y: (PAD.top + H - PAD.bottom) / 2, "text-anchor": "middle",
                  transform: `rotate(-90 14 ${(PAD.top + H - PAD.bottom) / 2})` }, yLabel),
    lines);
  const legend = h("ul", { class: "legend" }, series.filter((s) => s.points.length).map((s, i) =>
    h("li", { class: `series ${s.cls || `s${i}`}` }, h("span", { class: "swatch" }), `${s.name} (${s.points.length})`)));
  return h("figure", { class: "chart-box" }, chart, legend);
}
