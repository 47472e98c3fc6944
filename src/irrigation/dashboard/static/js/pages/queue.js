// The run queue: runs waiting for their pump (or, filtered, what became of them).

import { api, query } from "../api.js";
import { loadNames } from "../names.js";
import { actionButton, badge, duration, fill, h, showError, table, timeEl } from "../ui.js";

const STATUSES = ["waiting", "started", "skipped", "superseded", "cancelled"];

export async function runQueue(ctx) {
  document.title = "Run queue · irrigation";
  const names = await loadNames();
  const statusSelect = h(
    "select",
    { id: "queue-status" },
    STATUSES.map((s) => h("option", { value: s }, s)),
    h("option", { value: "" }, "all"),
  );
  const box = h("div", { id: "queue" });

  const load = async () => {
    const page = await api(`/run-queue${query({ status: statusSelect.value, limit: 200 })}`);
    if (!ctx.alive) return;
    fill(
      box,
      table(
        [
          ["Asked", (r) => timeEl(r.created_at)],
          ["Zone", (r) => names.zone(r.zone_id)],
          ["Pump", (r) => names.pump(r.pump_id)],
          ["Priority", (r) => r.priority],
          ["Duration", (r) => duration(r.duration_s) + (r.cycles > 1 ? ` (cycle ${r.cycle} of ${r.cycles})` : "")],
          ["Status", (r) => badge(r.status)],
          ["Why", (r) => r.last_reason?.replaceAll("_", " ") ?? "—"],
          ["Waits until", (r) => (r.status === "waiting" ? timeEl(r.deadline) : "—")],
          [
            "",
            (r) =>
              r.status === "waiting"
                ? actionButton(
                    "Cancel",
                    async () => {
                      await api(`/run-queue/${r.id}`, { method: "DELETE" });
                      await load();
                      return "The run request is cancelled.";
                    },
                    { confirm: `Cancel this ${duration(r.duration_s)} run of ${names.name(r.pump_id)}${r.cycles > 1 ? " and the watering's later cycles" : ""}?`, ok: "Cancel the run" },
                  )
                : "",
          ],
        ],
        page.items,
        { empty: statusSelect.value === "waiting" ? "No run is waiting." : "None." },
      ),
    );
  };
  statusSelect.addEventListener("change", () => load().catch(showError));

  fill(
    ctx.main,
    h("h1", {}, "Run queue"),
    h(
      "p",
      { class: "muted" },
      "Runs asked for a busy, resting or capacity-bound pump wait here, highest priority first.",
    ),
    h("div", { class: "pickers" }, h("label", {}, "Show ", statusSelect)),
    box,
  );
  await load();
  // Every change of the queue is decided (a decision) or starts a run (an activation).
  const reload = ctx.debounce(500, load);
  ctx.on("decision", reload);
  ctx.on("activation", reload);
}
