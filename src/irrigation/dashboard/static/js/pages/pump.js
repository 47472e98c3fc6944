// A pump: what it is doing (live), start for a duration, stop (asked first), reset a fault,
// and its runs.

import { api } from "../api.js";
import { ACTIVE, PumpBoard } from "../pumps.js";
import { actionButton, badge, duration, fill, h, section, table, timeEl } from "../ui.js";

const HISTORY_SHOWN = 20;

export async function pumpPage(ctx, pumpId) {
  let pump = await api(`/pumps/${pumpId}`);
  const [zone, history] = await Promise.all([
    api(`/zones/${pump.zone_id}`),
    api(`/pumps/${pumpId}/activations?limit=${HISTORY_SHOWN}`),
  ]);
  const board = new PumpBoard([pump]);
  await board.load();
  if (!ctx.alive) return;
  document.title = `${pump.name} · irrigation`;
  let runs = history.items;

  const refresh = async () => {
    pump = await api(`/pumps/${pumpId}`);
    const run = pump.active_activation_id ? await api(`/activations/${pump.active_activation_id}`) : null;
    board.set(pump, run);
    paint();
  };

  const durationInput = h("input", {
    id: "duration",
    type: "number",
    min: 1,
    max: pump.max_runtime_s,
    step: 1,
    required: true,
    inputmode: "numeric",
    value: String(Math.min(10, pump.max_runtime_s)),
  });
  const start = actionButton(
    "Start",
    async () => {
      if (!durationInput.reportValidity()) return undefined;
      const run = await api(`/pumps/${pumpId}/activations`, {
        method: "POST",
        body: { duration_s: Number(durationInput.value), priority: "manual" },
      });
      noteRun(run);
      await refresh();
      return `Asked ${pump.name} to run for ${duration(run.duration_s)}.`;
    },
    { id: "start", kind: "primary" },
  );
  const stop = actionButton(
    "Stop",
    async () => {
      const { stopped } = await api(`/pumps/${pumpId}/stop`, { method: "POST" });
      stopped.forEach(noteRun);
      await refresh();
      return stopped.length ? `Stopped ${pump.name}.` : `${pump.name} was not running.`;
    },
    { id: "stop", kind: "danger", confirm: `Stop ${pump.name} now?`, ok: "Stop the pump" },
  );
  const reset = actionButton(
    "Reset fault",
    async () => {
      pump = await api(`/pumps/${pumpId}/reset`, { method: "POST" });
      board.set(pump);
      paint();
      return `The fault of ${pump.name} is cleared.`;
    },
    {
      id: "reset",
      confirm: `Clear the fault of ${pump.name}? Do it once the cause is fixed: the pump can run again.`,
      ok: "Clear the fault",
    },
  );
  const startForm = h(
    "form",
    { class: "controls", id: "start-form" },
    h("label", { for: "duration" }, `Run for (seconds, at most ${pump.max_runtime_s})`),
    h("div", { class: "row" }, durationInput, start),
  );
  startForm.addEventListener("submit", (event) => {
    event.preventDefault();
    start.click();
  });

  const faultBox = h("div", { id: "fault", class: "problem" });
  const statusBox = h("p", { class: "status-line" }, board.cell(pumpId));
  const historyBox = h("div", { id: "history" });
  const paint = () => {
    board.paint();
    faultBox.hidden = !pump.fault;
    fill(faultBox, pump.fault ? [h("strong", {}, "Fault: "), pump.fault, " since ", timeEl(pump.fault_at), " ", reset] : []);
    stop.disabled = !pump.active_activation_id;
    fill(
      historyBox,
      table(
        [
          ["Requested", (a) => timeEl(a.requested_at)],
          ["Status", (a) => badge(a.status)],
          ["Duration", (a) => duration(a.duration_s)],
          ["Priority", (a) => a.priority],
          ["Started", (a) => timeEl(a.started_at)],
          ["Stopped", (a) => timeEl(a.stopped_at)],
          ["Ended by", (a) => a.error ?? a.stop_cause ?? (ACTIVE.has(a.status) ? "—" : "")],
          ["Origin", (a) => a.origin],
        ],
        runs,
        { empty: "This pump has not run yet." },
      ),
    );
  };
  const noteRun = (run) => {
    const i = runs.findIndex((a) => a.id === run.id);
    if (i >= 0) runs[i] = { ...runs[i], ...run };
    else runs = [run, ...runs].slice(0, HISTORY_SHOWN);
  };

  fill(
    ctx.main,
    h(
      "p",
      { class: "crumbs" },
      h("a", { href: "#/" }, "Overview"),
      " / ",
      h("a", { href: `#/zones/${zone.id}` }, zone.name),
      " / pump",
    ),
    h("h1", {}, pump.name),
    h(
      "p",
      { class: "muted" },
      `Device ${pump.hardware_id} · runs at most ${duration(pump.max_runtime_s)} · rests ${duration(pump.cooldown_s)} after a run`,
    ),
    h("div", { id: "pump-status" }, statusBox, faultBox),
    section("Run", startForm, h("div", { class: "row" }, stop)),
    section("History", historyBox),
  );
  paint();

  board.listen(ctx, (id) => {
    if (id !== pumpId) return;
    pump = board.pumps.get(pumpId);
    const run = board.runs.get(pumpId);
    if (run) noteRun(run);
    paint();
  });
}
