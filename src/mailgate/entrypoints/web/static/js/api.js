// The JSON API with the browser session: the HttpOnly cookie travels by itself; unsafe
// requests echo the readable mailgate_csrf cookie in X-CSRF-Token (double submit).

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.errors = (problem && problem.errors) || [];
  }
}

export function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)mailgate_csrf=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : "";
}

export async function api(method, path, body, { raw = false, signOutOn401 = true } = {}) {
  const headers = { Accept: "application/json, application/problem+json" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (!["GET", "HEAD"].includes(method)) headers["X-CSRF-Token"] = csrfToken();
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { title: "Network error", detail: "mailgate did not answer; check the connection" });
  }
  if (res.status === 401 && signOutOn401 && !location.pathname.startsWith("/ui/login")) {
    location.assign(`/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    return new Promise(() => {}); // the page is going away: nothing after this should run
  }
  if (res.status === 204) return null;
  if (raw && res.ok) return res.text();
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, typeof data === "object" ? data : { detail: String(data).slice(0, 300) });
  return data;
}

// POST that reads an application/x-ndjson answer line by line (the server test streams each
// step as it completes); errors before the stream are problem documents, as with api().
export async function postStream(path, body, onEvent) {
  const headers = { Accept: "application/x-ndjson, application/problem+json", "Content-Type": "application/json", "X-CSRF-Token": csrfToken() };
  let res;
  try {
    res = await fetch(path, { method: "POST", headers, credentials: "same-origin", body: JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, { title: "Network error", detail: "mailgate did not answer; check the connection" });
  }
  if (!res.ok) {
    const type = res.headers.get("content-type") || "";
    const data = type.includes("json") ? await res.json() : { detail: (await res.text()).slice(0, 300) };
    throw new ApiError(res.status, data);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (line) onEvent(JSON.parse(line));
    }
    if (done) break;
  }
}

export const get = (p, o) => api("GET", p, undefined, o);
export const post = (p, b, o) => api("POST", p, b === undefined ? {} : b, o);
export const put = (p, b) => api("PUT", p, b);
export const patch = (p, b) => api("PATCH", p, b);
export const del = (p) => api("DELETE", p);
export const enc = encodeURIComponent;
