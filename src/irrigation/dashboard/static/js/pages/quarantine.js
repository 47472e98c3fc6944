// Quarantine review: readings the service refused, each with its reason; approve (with a
// corrected value if need be) stores it through the normal checks, reject drops it.

import { api, query } from "../api.js";
import { loadNames } from "../names.js";
import { actionButton, badge, fill, h, showError, table, timeEl } from "../ui.js";

export async function quarantinePage(ctx) {
  document.title = "Quarantine · irrigation";
  const names = await loadNames();
  const reviewSelect = h(
    "select",
    { id: "review-status" },
    h("option", { value: "pending" }, "to review"),
    h("option", { value: "approved" }, "approved"),
    h("option", { value: "rejected" }, "rejected"),
  );
  const box = h("div", { id: "quarantine" });

  const review = (item) => {
    if (item.review_status !== "pending") return badge(item.review_status);
    const input = h("input", {
      type: "number",
      step: "any",
      class: "narrow",
      id: `value-${item.id}`,
      "aria-label": "Corrected value (optional)",
      placeholder: "value",
    });
    const done = async (verb, note) => {
      await load();
      return note ?? `Item ${verb}.`;
    };
    return h(
      "div",
      { class: "row" },
      input,
      actionButton(
        "Approve",
        async () => {
          const body = input.value === "" ? null : { value: Number(input.value) };
          const approved = await api(`/quarantine/${item.id}/approve`, { method: "POST", body });
          return done("approved", approved.inserted ? "Approved and stored." : "Approved (already stored).");
        },
        { kind: "primary" },
      ),
      actionButton("Reject", async () => {
        await api(`/quarantine/${item.id}/reject`, { method: "POST" });
        return done("rejected");
      }),
    );
  };
  const load = async () => {
    const page = await api(`/quarantine${query({ review_status: reviewSelect.value, limit: 100 })}`);
    if (!ctx.alive) return;
    fill(
      box,
      table(
        [
          ["Received", (q) => timeEl(q.created_at)],
          ["Sensor", (q) => (q.sensor_id ? names.sensor(q.sensor_id) : "—")],
          ["Reason", (q) => h("span", {}, badge(q.reason), h("br"), q.detail)],
          ["Item", (q) => h("code", { class: "raw" }, JSON.stringify(q.raw))],
          ["Review", review],
        ],
        page.items,
        {
          empty: reviewSelect.value === "pending" ? "Nothing to review." : "None.",
          rowAttrs: (q) => ({ dataset: { item: q.id } }),
        },
      ),
    );
  };
  reviewSelect.addEventListener("change", () => load().catch(showError));

  fill(
    ctx.main,
    h("h1", {}, "Quarantine"),
    h("div", { class: "pickers" }, h("label", {}, "Show ", reviewSelect)),
    box,
  );
  await load();
}
