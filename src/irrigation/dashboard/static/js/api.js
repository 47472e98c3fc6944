// The API client: the signed-in key, JSON in and out, problem documents as errors.

const KEY = "irrigation.key";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key),
  signOut: () => sessionStorage.removeItem(KEY),
};

// An answer that was not 2xx: the problem document's title and detail are for people.
export class ApiError extends Error {
  constructor(status, problem) {
    const title = problem.title || `HTTP ${status}`;
    super(problem.detail ? `${title}: ${problem.detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = problem.detail || "";
    this.code = problem.code || "";
  }
}

// The server's clock minus ours, when they disagree by more than the Date header's second:
// countdowns (a run's end, a cooldown) are the server's times.
let skewMs = 0;
export const now = () => Date.now() + skewMs;

function noteClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isNaN(date)) return;
  const estimate = date + 500 - Date.now();
  skewMs = Math.abs(estimate) > 2000 ? estimate : 0;
}

const unauthorized = new Set();
export function onUnauthorized(fn) {
  unauthorized.add(fn);
}

export async function api(path, { method = "GET", body, form, key = session.key() } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  let payload;
  if (form) {
    payload = form;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/v1${path}`, { method, headers, body: payload, cache: "no-store" });
  } catch {
    throw new ApiError(0, {
      title: "The service did not answer",
      detail: "Check the connection and try again.",
    });
  }
  noteClock(response);
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { title: response.statusText, detail: text.slice(0, 200) };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data || {});
    if (response.status === 401) unauthorized.forEach((fn) => fn(error));
    throw error;
  }
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") q.set(name, value);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

// Every item of a list, page after page (up to `max`: a dashboard shows, it does not export).
export async function all(path, params = {}, max = 2000) {
  const items = [];
  let cursor;
  do {
    const page = await api(path + query({ ...params, limit: 500, cursor }));
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
