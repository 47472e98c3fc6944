// The live feed: one EventSource for the whole app, whichever page is open (a key may hold
// only a few streams at once). An EventSource cannot send a header, so each connection
// asks for a single-use ticket first; after an error it comes back with a fresh ticket and
// the last event id it saw, and the server sends what was missed.

import { api } from "./api.js";

export const TYPES = ["reading", "activation", "pump", "alert", "decision", "ingest_job"];
const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;

export class Feed {
  constructor(onState = () => {}, onGap = () => {}) {
    this.handlers = new Map(TYPES.map((type) => [type, new Set()]));
    this.onState = onState;
    this.onGap = onGap;
    this.lastId = null;
    this.source = null;
    this.timer = null;
    this.delay = FIRST_DELAY_MS;
    this.running = false;
  }

  // Calls `fn(data, event)` for each event of the type; returns the unsubscribe function.
  on(type, fn) {
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
    this.lastId = null;
    this.onState("offline");
  }

  async connect() {
    this.timer = null;
    if (!this.running) return;
    this.onState("connecting");
    let ticket;
    try {
      ({ ticket } = await api("/live/tickets", { method: "POST" }));
    } catch (error) {
      if (error.status !== 401) this.retry(); // 401: signed out, the app says why
      return;
    }
    if (!this.running) return;
    const params = new URLSearchParams({ ticket });
    if (this.lastId) params.set("last_event_id", this.lastId);
    const source = new EventSource(`/v1/events?${params}`);
    this.source = source;
    source.onopen = () => {
      this.delay = FIRST_DELAY_MS;
      this.onState("live");
    };
    // The browser would reconnect by itself, with the used ticket: close and do it ourselves.
    source.onerror = () => {
      source.close();
      if (this.source === source) {
        this.source = null;
        this.retry();
      }
    };
    for (const type of TYPES) source.addEventListener(type, (message) => this.dispatch(message));
    // The events after our last id were trimmed away: what the page shows may be stale.
    source.addEventListener("gap", (message) => {
      if (message.lastEventId) this.lastId = message.lastEventId;
      this.onGap();
    });
    // The server ends the stream (a slow consumer, a restart, a revoked key): come back
    // with a fresh ticket, which a revoked key does not get (then the app signs out).
    source.addEventListener("end", () => {
      source.close();
      if (this.source === source) {
        this.source = null;
        this.retry();
      }
    });
  }

  retry() {
    if (!this.running) return;
    this.onState("reconnecting");
    this.timer = setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
  }

  dispatch(message) {
    if (message.lastEventId) this.lastId = message.lastEventId;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    for (const fn of this.handlers.get(event.type) ?? []) {
      try {
        fn(event.data, event);
      } catch (error) {
        console.error("live event handler failed", error);
      }
    }
  }
}
