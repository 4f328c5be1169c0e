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
  const hd = m.headers || {};
  const recipients = recipientRows(m);
  const files = m.attachments || [];
  const meta = Object.entries(m.metadata || {});
  clear(ctx.el,
    h("p", {}, h("a", { href: tenantUrl("/ui/messages", ctx.tenant) }, "← All messages")),
    m.last_error && !["sent", "cancelled"].includes(m.status) ? banner(m.status === "failed" ? "bad" : "warn", h("strong", {}, "Last error: "), m.last_error) : null,
    h("section", { class: "panel" },
      h("div", { class: "page-head" }, h("h2", {}, "Status ", badge(m.status)), h("span", { class: "spacer" }), h("div", { class: "actions" }, actions)),
      h("dl", { class: "kv message-facts" },
        h("dt", {}, "Message id"), h("dd", { class: "mono" }, m.id),
        h("dt", {}, "Server"), h("dd", {}, m.server || "—"),
        h("dt", {}, "Priority"), h("dd", {}, badge(m.priority === "high" ? "bad" : m.priority === "low" ? "" : "queued", m.priority || "normal")),
        h("dt", {}, "Size"), h("dd", {}, m.size_bytes != null ? `${Number(m.size_bytes).toLocaleString()} bytes` : "—"),
        h("dt", {}, "Created"), h("dd", {}, fmtTime(m.created_at), m.created_by ? ` by ${m.created_by}` : "", m.source === "smtp" ? " over SMTP" : ""),
        m.send_at ? [h("dt", {}, "Send at"), h("dd", {}, fmtTime(m.send_at))] : null,
        h("dt", {}, "Next attempt"), h("dd", {}, fmtTime(m.next_attempt_at)),
        meta.length ? [h("dt", {}, "Metadata"), h("dd", { class: "metadata" }, meta.map(([k, v]) => [
          // Each pair finds the messages that carry it too (?metadata.KEY=VALUE).
          h("a", { href: tenantUrl("/ui/messages", ctx.tenant, { [`metadata.${k}`]: v }), title: `All messages with ${k} = ${v}` }, badge("", `${k}: ${v}`)), " "]))] : null)),
    h("section", { class: "panel", "aria-labelledby": "rcpt-h" }, h("h2", { id: "rcpt-h" }, "Recipients"),
      h("p", { class: "section-note" }, `Envelope sender (MAIL FROM): ${env.mail_from || "—"}`),
      h("div", { class: "table-wrap" }, h("table", { class: "cards recipients" },
        h("thead", {}, h("tr", {}, ["Recipient", "State", "Server's answer"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, recipients.map((r) => h("tr", { dataset: { rcpt: r.address } },
          h("td", { "data-label": "Recipient" }, r.address),
          h("td", { "data-label": "State" }, badge(r.kind, r.label)),
          h("td", { "data-label": "Answer", class: "mono" }, r.answer || "—"))))))),
    h("section", { class: "panel", "aria-labelledby": "hdr-h" }, h("h2", { id: "hdr-h" }, "Headers"),
      h("dl", { class: "kv headers" }, ["From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID"].filter((k) => hd[k]).map((k) =>
        [h("dt", {}, k), h("dd", { class: k === "Message-ID" ? "mono" : null }, hd[k])]))),
    h("section", { class: "panel", "aria-labelledby": "att-h" }, h("h2", { id: "att-h" }, "Attachments"),
      files.length ? h("ul", { class: "attachments" }, files.map((f) => h("li", {},
        h("strong", {}, f.filename || "(no name)"), h("span", { class: "muted" }, ` · ${f.content_type} · ${Number(f.size_bytes).toLocaleString()} bytes`))))
        : h("p", { class: "muted" }, "No attachments.")),
    h("section", { class: "panel" }, h("h2", {}, "Attempts"),
      attempts.length ? h("ol", { class: "timeline" }, attempts.map((a) => h("li", { class: a.outcome },
        h("div", {}, badge(a.outcome), " ", h("strong", {}, fmtTime(a.at)), a.ms != null ? h("span", { class: "muted" }, ` · ${a.ms} ms`) : null,
          a.possibly_delivered ? [" ", badge("warn", "possibly delivered")] : null),
        a.smtp_code || a.smtp_response ? h("div", { class: "mono" }, `${a.smtp_code ?? ""} ${a.smtp_response ?? ""}`) : null)))
        : h("p", { class: "muted" }, "No delivery attempt yet.")),
    h("section", { class: "panel" }, raw));
}

// Each envelope recipient's state: its own once recipients fared differently, else the
// message's (with the last attempt's answer).
function recipientRows(m) {
  const own = m.recipients || {};
  const last = (m.attempts || []).at(-1);
  const LABEL = { delivered: ["ok", "delivered"], refused: ["bad", "refused"], pending: ["warn", "pending"] };
  const fromStatus = { sent: "delivered", failed: "refused", cancelled: null };
  return ((m.envelope || {}).rcpt_to || []).map((address) => {
    const r = own[address];
    const state = r?.status || (m.status in fromStatus ? fromStatus[m.status] : "pending");
    const [kind, label] = state ? LABEL[state] || ["", state] : ["", "cancelled"];
    const answer = r ? `${r.code ?? ""} ${r.text || ""}`.trim() : last ? `${last.smtp_code ?? ""} ${last.smtp_response ?? ""}`.trim() : "";
    return { address, kind, label, answer };
  });
}

if (needTenant(ctx)) {
  if (ctx.item) await detail(ctx.item);
  else await list();
}
document.getElementById("main").dataset.ready = "1";
