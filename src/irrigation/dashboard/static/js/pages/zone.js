// A zone: its moisture chart (buckets from the aggregates API, readings live), sensors,
// pumps, rules, schedules and next run, and why it did or did not water.

import { all, api, query } from "../api.js";
import { MoistureChart } from "../chart.js";
import { PumpBoard } from "../pumps.js";
import {
  badge,
  duration,
  fill,
  h,
  number,
  secondsUntil,
  section,
  showError,
  table,
  timeEl,
  when,
} from "../ui.js";

const RANGES = [
  ["24 hours", 1],
  ["7 days", 7],
  ["30 days", 30],
  ["1 year", 365],
];
const DECISIONS_SHOWN = 30;

export async function zonePage(ctx, zoneId) {
  const [zone, sensors, pumps, rules, schedules, decisions] = await Promise.all([
    api(`/zones/${zoneId}`),
    all("/sensors", { zone_id: zoneId }),
    all("/pumps", { zone_id: zoneId }),
    all("/threshold-rules", { zone_id: zoneId }),
    all("/schedules", { zone_id: zoneId }),
    api(`/zones/${zoneId}/decisions?limit=${DECISIONS_SHOWN}`),
  ]);
  const latest = new Map();
  await Promise.all(
    sensors.map(async (s) => {
      try {
        latest.set(s.id, await api(`/sensors/${s.id}/latest`));
      } catch {
        // Shown as "—".
      }
    }),
  );
  const board = new PumpBoard(pumps);
  await board.load();
  if (!ctx.alive) return;
  document.title = `${zone.name} · irrigation`;
  const tz = zone.timezone;
  const moistureSensors = sensors.filter((s) => s.kind === "soil_moisture");
  const unit = moistureSensors[0]?.unit ?? "%";

  // Sensors, their latest values live --------------------------------------------------
  const sensorRows = h("div");
  const paintSensors = () =>
    fill(
      sensorRows,
      table(
        [
          ["Sensor", (s) => s.name],
          ["Kind", (s) => s.kind.replaceAll("_", " ")],
          ["Latest", (s) => number(latest.get(s.id)?.value, s.unit)],
          ["At", (s) => timeEl(latest.get(s.id)?.ts, tz)],
        ],
        sensors,
        { empty: "No sensors in this zone." },
      ),
    );
  paintSensors();

  // The chart ----------------------------------------------------------------------------
  const rangeSelect = h(
    "select",
    { id: "chart-range" },
    RANGES.map(([label, days]) => h("option", { value: days }, label)),
  );
  const bucketSelect = h(
    "select",
    { id: "chart-bucket" },
    h("option", { value: "hour" }, "hourly"),
    h("option", { value: "day" }, "daily"),
  );
  const chartBox = h("div", {
    id: "zone-chart",
    class: "chart",
    role: "img",
    "aria-label": `Soil moisture of ${zone.name}`,
    dataset: { live: "0" },
  });
  const latestLine = h("p", { id: "zone-latest", class: "muted", "aria-live": "polite" });
  let liveCount = 0;
  const chart = new MoistureChart(chartBox, { timezone: tz, unit });
  ctx.cleanup(() => chart.destroy());
  let since = 0;

  const paintLatest = (reading) => {
    if (!reading) {
      fill(latestLine, moistureSensors.length ? "No reading yet." : "This zone has no soil-moisture sensor.");
      return;
    }
    fill(latestLine, "Latest reading: ", h("strong", {}, number(reading.value, unit)), " at ", timeEl(reading.ts, tz));
  };
  const newest = () =>
    moistureSensors
      .map((s) => latest.get(s.id))
      .filter((r) => r && r.value !== null)
      .sort((a, b) => Date.parse(b.ts) - Date.parse(a.ts))[0];
  paintLatest(newest());

  const loadChart = async () => {
    const days = Number(rangeSelect.value);
    since = Date.now() / 1000 - days * 86400;
    const params = { bucket: bucketSelect.value, start: new Date(since * 1000).toISOString() };
    try {
      const aggregates = await api(`/zones/${zoneId}/aggregates${query(params)}`);
      if (!ctx.alive) return;
      chart.dropReadingsBefore(since);
      chart.setBuckets(aggregates.points ?? [], bucketSelect.value === "day" ? 86400 : 3600);
    } catch (error) {
      showError(error);
    }
  };
  rangeSelect.addEventListener("change", loadChart);
  bucketSelect.addEventListener("change", loadChart);

  // Pumps, rules, schedules ----------------------------------------------------------------
  const pumpsTable = table(
    [
      ["Pump", (p) => h("a", { href: `#/pumps/${p.id}` }, p.name)],
      ["Status", (p) => board.cell(p.id)],
      ["Max run", (p) => duration(p.max_runtime_s)],
      ["Cooldown", (p) => duration(p.cooldown_s)],
    ],
    pumps,
    { empty: "No pumps in this zone." },
  );
  const pumpName = (id) => pumps.find((p) => p.id === id)?.name ?? "any pump of the zone";
  const ruleText = (r) => {
    const kind = r.sensor_kind.replaceAll("_", " ");
    const text = `${duration(r.duration_s)} when the ${duration(r.window_s)} mean of ${kind} < ${r.start_below}, again above ${r.stop_above}`;
    // Only fresh data waters: how many readings, how fresh.
    return `${text}; needs ${r.min_readings} reading(s), the newest at most ${duration(r.max_age_s)} old`;
  };
  const rulesTable = table(
    [
      ["Rule", (r) => r.name ?? "—"],
      ["Waters", ruleText],
      ["Pump", (r) => pumpName(r.pump_id)],
      ["State", (r) => (r.enabled ? badge(r.armed ? "armed" : "disarmed") : badge("disabled"))],
      ["Last value", (r) => number(r.last_value)],
    ],
    rules,
    { empty: "No threshold rules." },
  );
  const cadence = (s) =>
    s.cron ? `cron ${s.cron}` : `${(s.weekdays ?? []).join(", ") || "every day"} at ${(s.start_times ?? []).join(", ")}`;
  const schedulesTable = table(
    [
      ["Schedule", (s) => s.name ?? "—"],
      ["When", cadence],
      ["Duration", (s) => duration(s.duration_s)],
      ["Pump", (s) => pumpName(s.pump_id)],
      ["Next run", (s) => (s.enabled ? timeEl(s.next_run_at, tz) : badge("disabled"))],
    ],
    schedules,
    { empty: "No schedules." },
  );
  const next = schedules
    .filter((s) => s.enabled && s.next_run_at)
    .sort((a, b) => Date.parse(a.next_run_at) - Date.parse(b.next_run_at))[0];
  const nextRun = h(
    "p",
    { id: "next-run", class: "stat" },
    next ? ["Next scheduled run: ", timeEl(next.next_run_at, tz), ` (${next.name ?? "schedule"}, ${duration(next.duration_s)})`] : "No scheduled run ahead.",
  );

  // Decisions --------------------------------------------------------------------------
  const decisionList = h("ol", { class: "decisions", id: "decisions" });
  const decisionItem = (d) =>
    h("li", {}, timeEl(d.at, tz), " ", badge(d.outcome), " ", h("span", {}, d.message));
  fill(decisionList, decisions.items.map(decisionItem));
  const noDecisions = h("p", { class: "empty" }, "No decisions yet.");
  noDecisions.hidden = decisions.items.length > 0;

  fill(
    ctx.main,
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Overview"), " / zone"),
    h("h1", {}, zone.name),
    h("p", { class: "muted" }, `Time zone ${tz}`),
    secondsUntil(zone.rain_delay_until) > 0
      ? h("div", { class: "banner banner-rain" }, `Rain delay for this zone until ${when(zone.rain_delay_until, tz)}.`)
      : null,
    section(
      "Soil moisture",
      h(
        "div",
        { class: "pickers" },
        h("label", {}, "Range ", rangeSelect),
        h("label", {}, "Buckets ", bucketSelect),
      ),
      chartBox,
      latestLine,
      h("p", { class: "muted small" }, `Lines: each bucket's mean, min and max; dots: readings. Times in ${tz}.`),
    ),
    section("Pumps", pumpsTable),
    section("Schedules", nextRun, schedulesTable),
    section("Threshold rules", rulesTable),
    section("Sensors", sensorRows),
    section("Why it did (not) water", noDecisions, decisionList),
  );
  await loadChart();
  const seed = moistureSensors.flatMap((s) => latest.get(s.id)?.recent ?? []);
  chart.addReadings(seed, since);

  // Live -----------------------------------------------------------------------------------
  const moistureIds = new Set(moistureSensors.map((s) => s.id));
  ctx.on("reading", (r) => {
    if (r.zone_id !== zoneId || !sensors.some((s) => s.id === r.sensor_id)) return;
    const known = latest.get(r.sensor_id);
    if (!known || !known.ts || Date.parse(known.ts) <= Date.parse(r.ts)) {
      latest.set(r.sensor_id, { ...known, ...r });
      paintSensors();
    }
    if (!moistureIds.has(r.sensor_id)) return;
    chart.addReadings([r], since);
    liveCount += 1;
    chartBox.dataset.live = String(liveCount);
    paintLatest(newest());
  });
  ctx.on("decision", (d) => {
    if (d.zone_id !== zoneId) return;
    decisionList.prepend(decisionItem(d));
    decisionList.querySelectorAll(`li:nth-child(n+${DECISIONS_SHOWN + 1})`).forEach((li) => li.remove());
    noDecisions.hidden = true;
  });
  board.listen(ctx, () => board.paint());
}
