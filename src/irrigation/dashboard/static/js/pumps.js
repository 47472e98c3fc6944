// What a pump is doing now, and the time left of its run or its rest, ticking locally.

import { api } from "./api.js";
import { badge, clock, fill, h, secondsUntil } from "./ui.js";

export const ACTIVE = new Set(["queued", "starting", "running"]);

// Derived as the server derives it (fleet/service.pump_status), so a cooldown ends on
// screen when it ends, without an event; a run's end is its deadline (the device's own
// auto-off time), not a guess from its duration.
export function pumpState(pump, run) {
  if (pump.fault) return { status: "fault" };
  if (pump.active_activation_id) {
    if (run && run.id === pump.active_activation_id) {
      if (run.status === "running") {
        return { status: "running", left: secondsUntil(run.run_deadline ?? run.auto_off_at) };
      }
      if (run.status === "queued" || run.status === "starting") return { status: "starting" };
    }
    return { status: "running" };
  }
  if (!pump.enabled) return { status: "disabled" };
  const rest = secondsUntil(pump.cooldown_until);
  if (rest > 0) return { status: "cooldown", left: rest };
  return { status: "idle" };
}

function leftText({ status, left }) {
  if (status === "running" && left !== undefined) return `${clock(left)} left`;
  if (status === "cooldown") return `rests ${clock(left)}`;
  return "";
}

// The site's pumps a page shows, kept current by the feed's `pump` and `activation` events.
export class PumpBoard {
  constructor(pumps) {
    this.pumps = new Map(pumps.map((p) => [p.id, p]));
    this.runs = new Map(); // pump id -> its newest activation seen
  }

  async load() {
    const busy = [...this.pumps.values()].filter((p) => p.active_activation_id);
    await Promise.all(
      busy.map(async (p) => {
        try {
          this.runs.set(p.id, await api(`/activations/${p.active_activation_id}`));
        } catch {
          // Shown as plain "running" until the feed says more.
        }
      }),
    );
  }

  listen(ctx, onChange = () => {}) {
    ctx.on("pump", (pump) => {
      if (!this.pumps.has(pump.id)) return;
      this.pumps.set(pump.id, pump);
      onChange(pump.id);
    });
    ctx.on("activation", (run) => {
      if (!this.pumps.has(run.pump_id)) return;
      const known = this.runs.get(run.pump_id);
      // Events of an older run arriving late must not hide the current one.
      if (known && known.id !== run.id && Date.parse(run.requested_at) < Date.parse(known.requested_at)) return;
      this.runs.set(run.pump_id, run);
      onChange(run.pump_id);
    });
    ctx.every(1000, () => this.paint());
  }

  set(pump, run) {
    this.pumps.set(pump.id, pump);
    if (run) this.runs.set(pump.id, run);
  }

  state(id) {
    return pumpState(this.pumps.get(id), this.runs.get(id));
  }

  // A placeholder that `paint` fills: status badge and time left.
  cell(id) {
    const el = h("span", { class: "pump-state", dataset: { pump: id } });
    this.paintOne(el);
    return el;
  }

  paintOne(el) {
    const state = this.state(el.dataset.pump);
    if (el.dataset.status === state.status && el.dataset.left === leftText(state)) return;
    el.dataset.status = state.status;
    el.dataset.left = leftText(state);
    fill(el, badge(state.status), " ", h("span", { class: "left" }, leftText(state)));
  }

  paint() {
    document.querySelectorAll(".pump-state[data-pump]").forEach((el) => {
      if (this.pumps.has(el.dataset.pump)) this.paintOne(el);
    });
  }
}
