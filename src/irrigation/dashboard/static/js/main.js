// The dashboard's shell: sign-in, hash routing (one page at a time, one live feed for
// all), the header's live state and open-alert count, and the site's banners.

import { api, onUnauthorized, session } from "./api.js";
import { Feed } from "./live.js";
import { actionButton, clearMessages, fill, h, secondsUntil, showError, when } from "./ui.js";
import { overview } from "./pages/overview.js";
import { zonePage } from "./pages/zone.js";
import { pumpPage } from "./pages/pump.js";
import { runQueue } from "./pages/queue.js";
import { alertsPage } from "./pages/alerts.js";
import { quarantinePage } from "./pages/quarantine.js";
import { jobsPage } from "./pages/jobs.js";

const ID = "([0-9a-fA-F-]{36})";
const ROUTES = [
  [/^\/$/, overview],
  [new RegExp(`^/zones/${ID}$`), zonePage],
  [new RegExp(`^/pumps/${ID}$`), pumpPage],
  [/^\/queue$/, runQueue],
  [/^\/alerts$/, alertsPage],
  [/^\/quarantine$/, quarantinePage],
  [/^\/jobs$/, jobsPage],
];

const $ = (id) => document.getElementById(id);
const main = $("main");
const feed = new Feed(
  (state) => {
    $("live-state").textContent = state;
    $("live-state").dataset.state = state;
  },
  // Events were missed for good: load the open page again.
  () => route(),
);
let page = null; // the open page's context
let site = null;

// A sign-in link (`irrigation up` prints one) carries the key in the fragment, which the
// browser never sends: keep it for this tab, and take it out of the address bar and history.
function takeKeyFromLink() {
  const match = location.hash.match(/^#key=([^&]+)/);
  if (!match) return;
  try {
    session.signIn(decodeURIComponent(match[1]));
  } catch {
    // Not a key; the sign-in form asks for one.
  }
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
}

// Page context: what a page subscribes to or schedules ends when another page opens.
function context() {
  const undo = [];
  return {
    main,
    feed,
    alive: true,
    on(type, fn) {
      undo.push(feed.on(type, fn));
    },
    cleanup(fn) {
      undo.push(fn);
    },
    every(ms, fn) {
      const timer = setInterval(fn, ms);
      undo.push(() => clearInterval(timer));
    },
    // Runs `fn` once, `ms` after the last call: many events, one reload.
    debounce(ms, fn) {
      let timer;
      undo.push(() => clearTimeout(timer));
      return () => {
        clearTimeout(timer);
        timer = setTimeout(() => Promise.resolve(fn()).catch(showError), ms);
      };
    },
    dispose() {
      this.alive = false;
      undo.splice(0).forEach((fn) => fn());
    },
  };
}

async function route() {
  if (!session.key()) return;
  page?.dispose();
  page = context();
  const path = location.hash.replace(/^#/, "") || "/";
  const found = ROUTES.map(([pattern, show]) => [path.match(pattern), show]).find(([m]) => m);
  document.querySelectorAll("#nav a").forEach((a) => {
    const current = a.getAttribute("href") === `#${path}`;
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  clearMessages();
  fill(main, h("p", { class: "loading" }, "Loading…"));
  main.setAttribute("aria-busy", "true");
  const mine = page;
  try {
    if (!found) throw { title: "No such page", detail: path };
    const [match, show] = found;
    await show(mine, ...match.slice(1));
    if (mine.alive) main.focus({ preventScroll: true });
  } catch (error) {
    if (!mine.alive) return;
    fill(main, h("h1", {}, "This page could not be shown"));
    showError(error);
  } finally {
    if (mine.alive) main.removeAttribute("aria-busy");
  }
}

// The header and the banners ---------------------------------------------------------

async function refreshAlertCount() {
  try {
    const page = await api("/alerts?status=raised&limit=500");
    const n = page.items.length;
    $("alert-count").textContent = n ? (page.next_cursor ? `${n}+` : String(n)) : "";
  } catch {
    // The count is a hint; the alerts page says what went wrong.
  }
}

export async function refreshSite() {
  try {
    site = await api("/sites/current");
  } catch {
    return;
  }
  $("site-name").textContent = site.name;
  const banners = [];
  if (secondsUntil(site.paused_until) > 0) {
    banners.push(
      h(
        "div",
        { class: "banner banner-paused", id: "banner-paused" },
        h("span", {}, `Automation is paused until ${when(site.paused_until)}.`),
        actionButton("Resume", async () => {
          await api("/sites/current/pause", { method: "DELETE" });
          await refreshSite();
          return "Automation resumed.";
        }),
      ),
    );
  }
  if (secondsUntil(site.rain_delay_until) > 0) {
    banners.push(
      h(
        "div",
        { class: "banner banner-rain", id: "banner-rain" },
        h("span", {}, `Rain delay for the whole site until ${when(site.rain_delay_until)}.`),
        actionButton("End rain delay", async () => {
          await api("/sites/current/rain-delay", { method: "DELETE" });
          await refreshSite();
          return "Rain delay ended.";
        }),
      ),
    );
  }
  fill($("banners"), banners);
}

// Sign-in ----------------------------------------------------------------------------

function showSignIn(reason) {
  feed.stop();
  page?.dispose();
  page = null;
  $("nav").hidden = true;
  $("who").hidden = true;
  fill($("banners"));
  const input = h("input", {
    id: "key",
    name: "key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "irr_…",
  });
  const form = h(
    "form",
    { class: "sign-in", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h(
      "p",
      {},
      "Paste an API key of your site. It is kept in this browser tab only, until you sign out ",
      "or close the tab. ",
      h("code", {}, "irrigation up"),
      " prints a link that signs you in with its demo key.",
    ),
    h("label", { for: "key" }, "API key"),
    input,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    const key = input.value.trim();
    try {
      await api("/sites/current", { key });
    } catch (error) {
      showError(error);
      return;
    }
    session.signIn(key);
    await start();
  });
  fill(main, form);
  if (reason) showError(reason);
  input.focus();
}

async function start() {
  try {
    await refreshSite();
    if (!site) await api("/sites/current"); // surfaces why, as a problem
  } catch (error) {
    if (error.status !== 401) showError(error);
    return;
  }
  $("nav").hidden = false;
  $("who").hidden = false;
  feed.stop(); // a stream opened with another key, if any
  feed.start();
  refreshAlertCount();
  if (!location.hash.startsWith("#/")) history.replaceState(null, "", "#/");
  await route();
}

onUnauthorized((error) => {
  session.signOut();
  site = null;
  showSignIn(error);
});

const alertCount = (() => {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(refreshAlertCount, 300);
  };
})();
feed.on("alert", alertCount);

$("sign-out").addEventListener("click", () => {
  session.signOut();
  site = null;
  showSignIn();
});

window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#key=")) {
    takeKeyFromLink();
    start();
  } else {
    route();
  }
});
// The banners (a pause set by someone else, or one that just ended) stay current enough.
setInterval(() => session.key() && refreshSite(), 60000);

takeKeyFromLink();
if (session.key()) start();
else showSignIn();
