// Alerts: the open ones first; acknowledge says "someone is on it" (the alert clears by
// itself once its condition is gone).

import { api, query } from "../api.js";
import { loadNames } from "../names.js";
import { actionButton, badge, fill, h, showError, table, timeEl } from "../ui.js";

export async function alertsPage(ctx) {
  document.title = "Alerts · irrigation";
  const names = await loadNames();
  const statusSelect = h(
    "select",
    { id: "alert-status" },
    h("option", { value: "raised" }, "open"),
    h("option", { value: "acknowledged" }, "acknowledged"),
    h("option", { value: "cleared" }, "cleared"),
    h("option", { value: "" }, "all"),
  );
  const box = h("div", { id: "alerts" });
  let alerts = [];

  const subject = (a) => {
    if (a.subject_type === "pump") return names.pump(a.subject_id);
    if (a.subject_type === "sensor") return names.sensor(a.subject_id);
    if (a.subject_type === "water_source") return "a water source";
    return "the site";
  };
  const paint = () =>
    fill(
      box,
      table(
        [
          ["Raised", (a) => timeEl(a.raised_at)],
          ["Severity", (a) => badge(a.severity)],
          ["Alert", (a) => h("span", {}, h("strong", {}, a.kind.replaceAll("_", " ")), h("br"), a.message)],
          ["About", subject],
          ["Status", (a) => badge(a.status)],
          [
            "",
            (a) =>
              a.status === "raised"
                ? actionButton(
                    "Acknowledge",
                    async () => {
                      const acked = await api(`/alerts/${a.id}/ack`, { method: "POST" });
                      update(acked);
                      return "Acknowledged.";
                    },
                    { class: "ack", "aria-label": `Acknowledge: ${a.message}` },
                  )
                : a.acknowledged_at
                  ? h("span", { class: "muted" }, "acknowledged ", timeEl(a.acknowledged_at))
                  : "",
          ],
        ],
        alerts,
        {
          empty: statusSelect.value === "raised" ? "No open alerts." : "None.",
          rowAttrs: (a) => ({ dataset: { alert: a.id, status: a.status } }),
        },
      ),
    );
  const update = (alert) => {
    const wanted = !statusSelect.value || statusSelect.value === alert.status;
    const i = alerts.findIndex((a) => a.id === alert.id);
    if (i >= 0) alerts[i] = alert;
    else if (wanted) alerts.unshift(alert);
    paint();
  };
  const load = async () => {
    const page = await api(`/alerts${query({ status: statusSelect.value, limit: 200 })}`);
    if (!ctx.alive) return;
    alerts = page.items;
    paint();
  };
  statusSelect.addEventListener("change", () => load().catch(showError));

  fill(
    ctx.main,
    h("h1", {}, "Alerts"),
    h("div", { class: "pickers" }, h("label", {}, "Show ", statusSelect)),
    box,
  );
  await load();
  ctx.on("alert", (data) => {
    const { change, ...alert } = data;
    update(alert);
  });
}
