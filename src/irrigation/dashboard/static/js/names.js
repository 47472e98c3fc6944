// Names for the ids that lists carry (a run request's zone and pump, an alert's subject).

import { all } from "./api.js";
import { h } from "./ui.js";

export async function loadNames() {
  const [zones, pumps, sensors] = await Promise.all([all("/zones"), all("/pumps"), all("/sensors")]);
  const names = new Map([...zones, ...pumps, ...sensors].map((x) => [x.id, x.name]));
  const zoneOfSensor = new Map(sensors.map((s) => [s.id, s.zone_id]));
  const name = (id) => names.get(id) ?? (id ? `${id.slice(0, 8)}…` : "—");
  return {
    name,
    zone: (id) => (id ? h("a", { href: `#/zones/${id}` }, name(id)) : "—"),
    pump: (id) => (id ? h("a", { href: `#/pumps/${id}` }, name(id)) : "—"),
    // A sensor links to its zone, which shows it.
    sensor: (id) => (zoneOfSensor.has(id) ? h("a", { href: `#/zones/${zoneOfSensor.get(id)}` }, name(id)) : name(id)),
  };
}
