// Workflow → Messages: list with status filters and search, detail with attempts and raw
// message, and hold / release / cancel / retry for one or many.
import { get, post, enc } from "../api.js";
import { h, clear, banner, toast, badge, fmtTime, errorText, busy, confirmDialog, nextId } from "../ui.js";
import { boot, needTenant, tenantUrl } from "../shell.js";

const ctx = await boot();
const ACTIVE = ["queued", "sending"];
const STATUSES = ["held", "scheduled", "queued", "sending", "deferred", "sent", "failed", "cancelled"];
// Which action applies to which status (README "Sending mail"). Mail is held when it is submitted
// ("hold": true); the API has no action to hold a message that is already queued.
const ACTIONS = {
  hold: { label: "Hold", ok: ["scheduled", "queued", "deferred"] },
  release: { label: "Release", ok: ["held"] },
  retry: { label: "Retry now", ok: ["deferred", "failed"] },
  cancel: { label: "Cancel", ok: ["held", "scheduled", "queued", "deferred"], danger: true },
};


const base = () => `/api/v1/tenants/${enc(ctx.tenant)}/messages`;
const addr = (a) => (a == null ? "" : typeof a === "string" ? a : a.name ? `${a.name} <${a.address}>` : a.address);
const addrs = (l) => (Array.isArray(l) ? l.map(addr).join(", ") : addr(l));

async function act(action, ids) {
  if (action === "cancel" && !(await confirmDialog(`Cancel ${ids.length === 1 ? "this message" : `${ids.length} messages`}?`, "Cancelled mail is never sent.", "Cancel mail", true))) return false;
  try {
    if (ids.length === 1) await post(`${base()}/${enc(ids[0])}/${action}`);
    else await post(`${base()}/${action}`, { ids });
    toast(`${ACTIONS[action].label}: ${ids.length} message${ids.length === 1 ? "" : "s"}`);
    return true;
  } catch (err) {
    toast(errorText(err), "bad", 6000);
    return false;
  }
}

async function list() {
  const params = new URLSearchParams(location.search);
  const state = { status: params.get("status") || "", q: params.get("q") || "", server: params.get("server") || "", items: [], cursor: null, selected: new Set() };
  // ?metadata.KEY=VALUE (README "Message metadata"), e.g. from a message's metadata link.
  state.meta = [...params.entries()].filter(([k]) => k.startsWith("metadata."));
  const metaFilter = h("div", { class: "toolbar", hidden: !state.meta.length },
    h("span", { class: "muted" }, "Metadata:"),
    state.meta.map(([k, v]) => h("code", { class: "meta-filter" }, `${k.slice(9)} = ${v}`)),
    h("button", { type: "button", class: "small", onclick: () => { state.meta = []; metaFilter.hidden = true; reload(); } }, "Clear"));
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Status" });
  for (const s of ["", ...STATUSES]) {
    const b = h("button", { type: "button", "aria-pressed": String(state.status === s), dataset: { status: s } }, s ? s : "all");
    b.addEventListener("click", () => { state.status = s; chips.querySelectorAll("button").forEach((c) => c.setAttribute("aria-pressed", String(c === b))); reload(); });
    chips.append(b);
  }
  const search = h("input", { type: "search", placeholder: "Search subject, address, id…", "aria-label": "Search messages", value: state.q });
  let timer;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { state.q = search.value.trim(); reload(); }, 300); });
  const server = h("select", { "aria-label": "Server" }, h("option", { value: "" }, "All servers"));
  try {
    for (const s of (await get(`/api/v1/tenants/${enc(ctx.tenant)}/email-servers`)).items) server.append(h("option", { value: s.name, selected: s.name === state.server }, s.name));
  } catch { /* the filter just stays empty */ }
  server.addEventListener("change", () => { state.server = server.value; reload(); });
  const refresh = h("button", { type: "button", id: "refresh" }, "Refresh");
  refresh.addEventListener("click", () => reload());
  const bulk = h("div", { class: "actions", role: "group", "aria-label": "Selected messages" });
  const count = h("span", { class: "muted" });
  const table = h("div", { class: "panel table-wrap" });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  more.addEventListener("click", () => load(true));
  clear(ctx.el, h("div", { class: "toolbar" }, search, server, refresh), h("div", { class: "toolbar" }, chips), metaFilter, ctx.canManageMessages ? h("div", { class: "toolbar" }, count, bulk) : null, table, more);

  function renderBulk() {
    const chosen = state.items.filter((m) => state.selected.has(m.id));
    count.textContent = chosen.length ? `${chosen.length} selected` : "Select messages to act on them";
    clear(bulk, Object.entries(ACTIONS).map(([a, spec]) => {
      const ids = chosen.filter((m) => spec.ok.includes(m.status)).map((m) => m.id);
      const b = h("button", { type: "button", class: spec.danger ? "danger small" : "small", disabled: !ids.length, dataset: { action: a } }, ids.length ? `${spec.label} (${ids.length})` : spec.label);
      b.addEventListener("click", async () => {
        busy(b, true);
        if (await act(a, ids)) { state.selected.clear(); await reload(); }
        else busy(b, false);
      });
      return b;
    }));
  }

  function render() {
    if (!state.items.length) {
      clear(table, h("p", { class: "empty" }, state.status || state.q || state.server || state.meta.length ? "No messages match." : "No messages yet."));
      renderBulk();
      return;
    }
    const all = h("input", { type: "checkbox", "aria-label": "Select all shown" });
    all.checked = state.items.every((m) => state.selected.has(m.id));
    all.addEventListener("change", () => { state.items.forEach((m) => (all.checked ? state.selected.add(m.id) : state.selected.delete(m.id))); render(); });
    clear(table, h("table", { class: "cards messages" },
      h("thead", {}, h("tr", {}, ctx.canManageMessages ? h("th", {}, all) : null, ["Status", "Created", "From", "To", "Subject", "Server"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, state.items.map((m) => {
        const cb = h("input", { type: "checkbox", "aria-label": `Select ${m.subject || m.id}`, checked: state.selected.has(m.id) });
        cb.addEventListener("click", (e) => e.stopPropagation());
        cb.addEventListener("change", () => { cb.checked ? state.selected.add(m.id) : state.selected.delete(m.id); renderBulk(); });
        const link = h("a", { href: tenantUrl(`/ui/messages/${enc(m.id)}`, ctx.tenant) }, m.subject || "(no subject)");
        const tr = h("tr", { class: "clickable", dataset: { id: m.id, status: m.status } },
          ctx.canManageMessages ? h("td", { class: "select", "data-label": "Select" }, cb) : null,
          h("td", { "data-label": "Status" }, m.source === "smtp" ? h("span", {}, badge(m.status), " ", h("span", { class: "badge source", title: "Came in over SMTP submission" }, "SMTP")) : badge(m.status)), h("td", { class: "nowrap", "data-label": "Created" }, fmtTime(m.created_at)), h("td", { "data-label": "From" }, addr(m.from)),
          h("td", { "data-label": "To" }, addrs(m.to)), h("td", { "data-label": "Subject" }, link), h("td", { class: "server", "data-label": "Server" }, m.server || ""));
        tr.addEventListener("click", () => location.assign(link.href));
        return tr;
      }))));
    renderBulk();
  }

  // While mail is on its way, the list refreshes itself, so a release is seen to finish.
  let poll = null;
  function schedulePoll() {
    clearTimeout(poll);
    if (state.items.some((m) => ACTIVE.includes(m.status))) poll = setTimeout(() => load(false), 3000);
  }

  async function load(append = false) {
    const q = new URLSearchParams({ limit: "50" });
    if (state.status) q.set("status", state.status);
    if (state.q) q.set("q", state.q);
    if (state.server) q.set("server", state.server);
    for (const [k, v] of state.meta) q.set(k, v);
    if (append && state.cursor) q.set("cursor", state.cursor);
    try {
      const r = await get(`${base()}?${q}`);
      state.items = append ? state.items.concat(r.items) : r.items;
      state.cursor = r.next_cursor || null;
      more.hidden = !state.cursor;
      render();
      if (!append) schedulePoll();
    } catch (err) {
      clear(table, banner("bad", errorText(err)));
    }
  }
  async function reload() {
    const u = new URLSearchParams({ tenant: ctx.tenant });
    for (const k of ["status", "q", "server"]) if (state[k]) u.set(k, state[k]);
    for (const [k, v] of state.meta) u.set(k, v);
    history.replaceState(null, "", `/ui/messages?${u}`);
    await load(false);
  }
  await load(false);
}

async function detail(id) {
  let m;
  try {
    m = await get(`${base()}/${enc(id)}`);
  } catch (err) {
    clear(ctx.el, banner("bad", err.status === 404 ? "This message does not exist in this tenant." : errorText(err)), h("a", { href: tenantUrl("/ui/messages", ctx.tenant) }, "← All messages"));
    return;
  }
  document.getElementById("page-title").textContent = m.subject || "(no subject)";
  const actions = ctx.canManageMessages ? Object.entries(ACTIONS).filter(([, s]) => s.ok.includes(m.status)).map(([a, s]) => {
    const b = h("button", { type: "button", class: s.danger ? "danger" : a === "release" ? "primary" : "", dataset: { action: a } }, s.label);
    b.addEventListener("click", async () => { busy(b, true); if (await act(a, [m.id])) location.reload(); else busy(b, false); });
    return b;
  }) : [];
  const rawId = nextId("raw");
  const raw = h("details", { id: rawId }, h("summary", {}, "Raw message"), h("pre", { class: "raw" }, "Loading…"));
  raw.addEventListener("toggle", async () => {
    if (!raw.open || raw.dataset.loaded) return;
    try {
      raw.querySelector("pre").textContent = await get(`${base()}/${enc(id)}/raw`, { raw: true });
      raw.dataset.loaded = "1";
    } catch (err) { raw.querySelector("pre").textContent = errorText(err); }
  });
  if (ACTIVE.includes(m.status)) setTimeout(() => location.reload(), 3000);
  const attempts = m.attempts || [];
  const env = m.envelope || {};
  clear(ctx.el,
    h("p", {}, h("a", { href: tenantUrl("/ui/messages", ctx.tenant) }, "← All messages")),
    m.last_error && !["sent", "cancelled"].includes(m.status) ? banner(m.status === "failed" ? "bad" : "warn", h("strong", {}, "Last error: "), m.last_error) : null,
    h("section", { class: "panel" },
      h("div", { class: "page-head" }, h("h2", {}, "Status ", badge(m.status)), h("span", { class: "spacer" }), h("div", { class: "actions" }, actions)),
      h("dl", { class: "kv" },
        h("dt", {}, "Message id"), h("dd", { class: "mono" }, m.id),
        h("dt", {}, "Server"), h("dd", {}, m.server || "—"),
        h("dt", {}, "From"), h("dd", {}, addr(m.from) || env.mail_from || "—"),
        h("dt", {}, "To"), h("dd", {}, addrs(m.to) || (env.rcpt_to || []).join(", ")),
        m.cc?.length ? [h("dt", {}, "Cc"), h("dd", {}, addrs(m.cc))] : null,
        env.mail_from !== undefined ? [h("dt", {}, "Envelope"), h("dd", { class: "mono" }, `MAIL FROM:<${env.mail_from}> RCPT TO:${(env.rcpt_to || []).map((r) => `<${r}>`).join(" ")}`)] : null,
        h("dt", {}, "Size"), h("dd", {}, m.size_bytes != null ? `${Number(m.size_bytes).toLocaleString()} bytes` : "—"),
        h("dt", {}, "Metadata"), h("dd", { class: "metadata" }, Object.keys(m.metadata || {}).length
          ? h("ul", { class: "meta-list" }, Object.entries(m.metadata).map(([k, v]) => h("li", {}, h("a", { href: tenantUrl("/ui/messages", ctx.tenant, { [`metadata.${k}`]: v }), title: `Messages with ${k} = ${v}` }, h("code", {}, k), " = ", v))))
          : h("span", { class: "muted" }, "none")),
        m.headers?.From ? [h("dt", {}, "From header"), h("dd", {}, m.headers.From)] : null,
        m.headers?.["Message-ID"] ? [h("dt", {}, "Message-ID"), h("dd", { class: "mono" }, m.headers["Message-ID"])] : null,
        h("dt", {}, "Created"), h("dd", {}, fmtTime(m.created_at), m.created_by ? ` by ${m.created_by}` : "", m.source === "smtp" ? " over SMTP" : ""),
        m.send_at ? [h("dt", {}, "Send at"), h("dd", {}, fmtTime(m.send_at))] : null,
        h("dt", {}, "Next attempt"), h("dd", {}, fmtTime(m.next_attempt_at)))),
    h("section", { class: "panel" }, h("h2", {}, "Attempts"),
      attempts.length ? h("ol", { class: "timeline" }, attempts.map((a) => h("li", { class: a.outcome },
        h("div", {}, badge(a.outcome), " ", h("strong", {}, fmtTime(a.at)), a.ms != null ? h("span", { class: "muted" }, ` · ${a.ms} ms`) : null),
        a.smtp_code || a.smtp_response ? h("div", { class: "mono" }, `${a.smtp_code ?? ""} ${a.smtp_response ?? ""}`) : null)))
        : h("p", { class: "muted" }, "No delivery attempt yet.")),
    h("section", { class: "panel" }, raw));
}

if (needTenant(ctx)) {
  if (ctx.item) await detail(ctx.item);
  else await list();
}
document.getElementById("main").dataset.ready = "1";
