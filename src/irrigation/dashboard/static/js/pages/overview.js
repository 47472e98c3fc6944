// Overview: every zone with its current soil moisture, every pump with what it is doing,
// the open alerts.

import { all, api } from "../api.js";
import { PumpBoard } from "../pumps.js";
import { fill, h, number, secondsUntil, section, table, timeEl, when } from "../ui.js";

export async function overview(ctx) {
  document.title = "Overview · irrigation";
  const [zones, pumps, sensors, open] = await Promise.all([
    all("/zones"),
    all("/pumps"),
    all("/sensors", { kind: "soil_moisture" }),
    api("/alerts?status=raised&limit=500"),
  ]);
  const latest = new Map(); // sensor id -> {value, ts}
  await Promise.all(
    sensors.map(async (s) => {
      try {
        const reading = await api(`/sensors/${s.id}/latest`);
        if (reading.value !== null) latest.set(s.id, reading);
      } catch {
        // A sensor without a value shows as "—".
      }
    }),
  );
  const board = new PumpBoard(pumps);
  await board.load();
  if (!ctx.alive) return;

  const zoneNames = new Map(zones.map((z) => [z.id, z.name]));
  const sensorsOf = (zoneId) => sensors.filter((s) => s.zone_id === zoneId);
  const moisture = (zoneId) => {
    const values = sensorsOf(zoneId).map((s) => latest.get(s.id)).filter(Boolean);
    if (!values.length) return { value: null, ts: null, unit: "" };
    const mean = values.reduce((sum, r) => sum + r.value, 0) / values.length;
    const ts = values.map((r) => r.ts).reduce((a, b) => (Date.parse(a) > Date.parse(b) ? a : b));
    return { value: mean, ts, unit: sensorsOf(zoneId)[0].unit };
  };

  const alertsBox = h("p", { class: "stat" });
  const paintAlerts = (count, more) => {
    fill(
      alertsBox,
      h("a", { href: "#/alerts", id: "open-alerts" }, `${count}${more ? "+" : ""} open alert${count === 1 ? "" : "s"}`),
    );
  };
  paintAlerts(open.items.length, open.next_cursor);

  const zoneCard = (z) => {
    const m = moisture(z.id);
    return h(
      "li",
      { class: "card zone", dataset: { zone: z.id } },
      h("a", { href: `#/zones/${z.id}`, class: "card-title" }, z.name),
      h("span", { class: "big moisture", "aria-label": `soil moisture of ${z.name}` }, number(m.value, m.unit)),
      h("span", { class: "muted" }, m.ts ? ["at ", timeEl(m.ts)] : "no reading yet"),
      secondsUntil(z.rain_delay_until) > 0
        ? h("span", { class: "badge badge-rain" }, `rain delay until ${when(z.rain_delay_until)}`)
        : null,
    );
  };
  const zonesList = h("ul", { class: "grid", id: "zones" });
  const paintZone = (zoneId) => {
    const z = zones.find((x) => x.id === zoneId);
    const old = zonesList.querySelector(`[data-zone="${zoneId}"]`);
    if (z && old) old.replaceWith(zoneCard(z));
  };
  fill(zonesList, zones.map(zoneCard));

  const pumpsTable = table(
    [
      ["Pump", (p) => h("a", { href: `#/pumps/${p.id}` }, p.name)],
      ["Zone", (p) => zoneNames.get(p.zone_id) ?? "—"],
      ["Status", (p) => board.cell(p.id)],
    ],
    pumps,
    { empty: "No pumps yet.", rowAttrs: (p) => ({ dataset: { pumpRow: p.id } }) },
  );

  fill(
    ctx.main,
    h("h1", {}, "Overview"),
    alertsBox,
    section("Zones", zones.length ? zonesList : h("p", { class: "empty" }, "No zones yet.")),
    section("Pumps", pumpsTable),
  );

  const sensorZone = new Map(sensors.map((s) => [s.id, s.zone_id]));
  ctx.on("reading", (r) => {
    if (!sensorZone.has(r.sensor_id)) return;
    const known = latest.get(r.sensor_id);
    if (known && Date.parse(known.ts) > Date.parse(r.ts)) return;
    latest.set(r.sensor_id, r);
    paintZone(sensorZone.get(r.sensor_id));
  });
  board.listen(ctx, () => board.paint());
  const reloadAlerts = ctx.debounce(300, async () => {
    const page = await api("/alerts?status=raised&limit=500");
    if (ctx.alive) paintAlerts(page.items.length, page.next_cursor);
  });
  ctx.on("alert", reloadAlerts);
}
