// Ingestion jobs: API batches, MQTT flushes and history imports, imports with their
// progress live; and an upload form for an import.

import { api } from "../api.js";
import { actionButton, badge, fill, h, number, table, timeEl } from "../ui.js";

const SHOWN = 50;

export async function jobsPage(ctx) {
  document.title = "Imports · irrigation";
  let jobs = (await api(`/ingest/jobs?limit=${SHOWN}`)).items;
  if (!ctx.alive) return;
  const box = h("div", { id: "jobs" });

  const progress = (j) => {
    if (!j.total) return j.status === "completed" ? "100 %" : "—";
    const pct = Math.floor((100 * j.processed) / j.total);
    return h(
      "span",
      { class: "progress" },
      h("progress", { max: j.total, value: j.processed, "aria-label": `${pct} % processed` }),
      ` ${pct} %`,
    );
  };
  const paint = () =>
    fill(
      box,
      table(
        [
          ["Created", (j) => timeEl(j.created_at)],
          ["Source", (j) => j.source],
          ["Status", (j) => badge(j.status)],
          ["Progress", progress],
          ["Inserted", (j) => number(j.inserted)],
          ["Duplicates", (j) => number(j.duplicates)],
          ["Quarantined", (j) => number(j.quarantined)],
          ["Error", (j) => j.error ?? ""],
        ],
        jobs,
        { empty: "No ingestion jobs yet.", rowAttrs: (j) => ({ dataset: { job: j.id } }) },
      ),
    );
  const update = (job) => {
    const i = jobs.findIndex((j) => j.id === job.id);
    if (i >= 0) jobs[i] = job;
    else jobs = [job, ...jobs].slice(0, SHOWN);
    paint();
  };

  const file = h("input", { type: "file", id: "import-file", accept: ".ndjson,.jsonl,.json,.csv" });
  const upload = actionButton(
    "Upload",
    async () => {
      if (!file.files.length) throw { title: "Choose a file first" };
      const form = new FormData();
      form.append("file", file.files[0]);
      update(await api("/ingest/jobs", { method: "POST", form }));
      file.value = "";
      return "Uploaded; the import runs in the background.";
    },
    { kind: "primary", id: "upload" },
  );

  fill(
    ctx.main,
    h("h1", {}, "Ingestion jobs"),
    h(
      "form",
      { class: "controls", id: "import-form" },
      h("label", { for: "import-file" }, "Import a history file (NDJSON or CSV with sensor_id,ts,value)"),
      h("div", { class: "row" }, file, upload),
    ),
    box,
  );
  paint();
  ctx.on("ingest_job", update);
}
