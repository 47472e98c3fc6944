// A zone's soil moisture: the aggregates API's buckets (mean, min, max) as lines, and raw
// readings (the newest few, then each one the live feed brings) as points.

import uPlot from "../vendor/uplot/uPlot.esm.js";

const HEIGHT = 260;
const MAX_READINGS = 2000;

export class MoistureChart {
  constructor(container, { timezone, unit }) {
    this.container = container;
    this.timezone = timezone;
    this.unit = unit;
    this.buckets = [];
    this.readings = []; // [seconds, value]
    this.plot = null;
    this.resize = new ResizeObserver(() => this.plot?.setSize(this.size()));
    this.resize.observe(container);
  }

  size() {
    return { width: Math.max(this.container.clientWidth, 200), height: HEIGHT };
  }

  // A bucket's values are drawn at its middle, where its readings are on average.
  setBuckets(points, bucketSeconds) {
    this.buckets = points
      .filter((p) => p.avg !== null)
      .map((p) => ({ ...p, t: Date.parse(p.start) / 1000 + bucketSeconds / 2 }));
    this.render();
  }

  // Readings older than the chart's range stay off it.
  addReadings(readings, since) {
    for (const r of readings) {
      const t = Date.parse(r.ts) / 1000;
      if (t >= since) this.readings.push([t, r.value]);
    }
    this.readings.sort((a, b) => a[0] - b[0]);
    this.readings = this.readings.filter((r, i, all) => i === 0 || r[0] !== all[i - 1][0]).slice(-MAX_READINGS);
    this.render();
  }

  dropReadingsBefore(since) {
    this.readings = this.readings.filter(([t]) => t >= since);
  }

  data() {
    // uPlot wants one x array shared by every series: a bucket row has no reading, a
    // reading row no bucket values.
    const rows = [
      ...this.buckets.map((p) => [p.t, p.avg, p.min, p.max, null]),
      ...this.readings.map(([t, v]) => [t, null, null, null, v]),
    ].sort((a, b) => a[0] - b[0]);
    return [0, 1, 2, 3, 4].map((i) => rows.map((row) => row[i]));
  }

  render() {
    const data = this.data();
    if (this.plot) {
      this.plot.setData(data);
      return;
    }
    const line = (label, stroke, width, dash) => ({
      label,
      stroke,
      width,
      dash,
      spanGaps: true,
      points: { show: false },
      value: (u, v) => (v === null ? "—" : `${v.toFixed(1)} ${this.unit}`),
    });
    this.plot = new uPlot(
      {
        ...this.size(),
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), this.timezone),
        scales: { x: { time: true } },
        axes: [{}, { label: this.unit, size: 50 }],
        series: [
          {},
          line("Mean", "#1b5e20", 2),
          line("Min", "#6d8f6f", 1, [4, 4]),
          line("Max", "#6d8f6f", 1, [4, 4]),
          {
            label: "Readings",
            stroke: "#0d47a1",
            fill: "#0d47a1",
            paths: () => null,
            points: { show: true, size: 6, fill: "#0d47a1" },
            value: (u, v) => (v === null ? "—" : `${v} ${this.unit}`),
          },
        ],
      },
      data,
      this.container,
    );
  }

  destroy() {
    this.resize.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}
