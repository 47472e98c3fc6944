// DOM building (never innerHTML: what the API returns is text), formatting, and the few
// controls every page shares.

import { now } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value") el.value = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  put(el, children);
  return el;
}

function put(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function fill(el, ...children) {
  el.replaceChildren();
  put(el, children);
  return el;
}

// Formatting -----------------------------------------------------------------------------

const DATE_TIME = { dateStyle: "medium", timeStyle: "medium" };

// In the browser's time zone; or in `timeZone` (a zone's), then said, as the browser's may
// differ.
export function when(iso, timeZone) {
  if (!iso) return "—";
  const options = timeZone ? { ...DATE_TIME, timeStyle: "long", timeZone } : DATE_TIME;
  return new Date(iso).toLocaleString(undefined, options);
}

export function timeEl(iso, timeZone) {
  return iso ? h("time", { datetime: iso }, when(iso, timeZone)) : "—";
}

// 75 -> "1:15", 3725 -> "1:02:05": a countdown reads best as a clock.
export function clock(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

export function duration(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.round(seconds / 6) / 10} min`;
  return `${Math.round(seconds / 360) / 10} h`;
}

export function number(value, unit = "") {
  if (value === null || value === undefined) return "—";
  const text = Number(value).toLocaleString(undefined, { maximumFractionDigits: 2 });
  return unit ? `${text} ${unit}` : text;
}

export function badge(status, label = status) {
  return h("span", { class: `badge badge-${status}` }, label.replaceAll("_", " "));
}

// A table that becomes one card per row on a narrow screen (each cell labelled by CSS).
// `columns`: [[heading, row => cell content], ...]
export function table(columns, rows, { empty = "Nothing here.", rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "table",
    { class: "cards" },
    h("thead", {}, h("tr", {}, columns.map(([heading]) => h("th", { scope: "col" }, heading)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          rowAttrs ? rowAttrs(row) : {},
          columns.map(([heading, cell]) =>
            h("td", { dataset: { label: heading } }, h("div", { class: "cell" }, cell(row))),
          ),
        ),
      ),
    ),
  );
}

export function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

// Messages and actions -------------------------------------------------------------------

const messages = () => document.getElementById("messages");

// An error as the API said it: its problem document's title and detail.
export function showError(error) {
  const title = error.title || "Something went wrong";
  const detail = error.detail ?? (error.title ? "" : String(error.message || error));
  fill(
    messages(),
    h(
      "div",
      { class: "problem" },
      h("strong", { class: "problem-title" }, title),
      detail ? h("span", { class: "problem-detail" }, ` ${detail}`) : null,
      h("button", { type: "button", class: "quiet", onclick: clearMessages }, "Dismiss"),
    ),
  );
}

export function showNote(text) {
  fill(messages(), h("div", { class: "note" }, text));
  setTimeout(() => {
    if (messages().textContent.includes(text)) clearMessages();
  }, 5000);
}

export function clearMessages() {
  messages().replaceChildren();
}

export function confirmAction(text, ok = "OK") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// A button that runs `fn` once at a time, asks first when `confirm` says so, and shows what
// went wrong; `fn`'s answer, when a string, is shown as a note.
export function actionButton(label, fn, { confirm, ok, kind = "", ...attrs } = {}) {
  const button = h("button", { type: "button", class: kind, ...attrs }, label);
  // Busy, not disabled: the page may disable the button meanwhile (a run that ended), and
  // that must outlast the action.
  let busy = false;
  button.addEventListener("click", async () => {
    if (busy || (confirm && !(await confirmAction(confirm, ok ?? label)))) return;
    busy = true;
    button.setAttribute("aria-busy", "true");
    clearMessages();
    try {
      const note = await fn();
      if (typeof note === "string") showNote(note);
    } catch (error) {
      showError(error);
    } finally {
      busy = false;
      button.removeAttribute("aria-busy");
    }
  });
  return button;
}

export function secondsUntil(iso) {
  return iso ? (Date.parse(iso) - now()) / 1000 : 0;
}
