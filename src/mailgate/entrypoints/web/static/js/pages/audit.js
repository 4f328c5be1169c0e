// Administration → Audit log (README "Audit log"): who changed what, from where, when. Tenant
// administrators see their tenant's entries; system administrators may switch to the whole
// installation's (users, system settings, sign-ins included).
import { get, enc } from "../api.js";
import { h, clear, banner, fmtTime, badge, errorText, field } from "../ui.js";
import { boot, needTenant } from "../shell.js";

const ctx = await boot();
const PREFIXES = ["", "email_server.*", "oauth2.*", "api_key.*", "user.*", "tenant.*", "remote_client.*", "webhook.*", "message.*", "messages.*", "system.*", "auth.*"];

if (ctx.systemAdmin || needTenant(ctx)) {
  if (!ctx.isAdmin && !ctx.systemAdmin) clear(ctx.el, banner("info", "Only administrators of this tenant read its audit log."));
  else await main();
}
document.getElementById("main").dataset.ready = "1";

async function main() {
  const params = new URLSearchParams(location.search);
  const scope = h("select", {},
    ctx.tenant && ctx.isAdmin ? h("option", { value: "tenant" }, `Tenant ${ctx.tenant}`) : null,
    ctx.systemAdmin ? h("option", { value: "all", selected: params.get("scope") === "all" || !ctx.tenant }, "Whole installation") : null);
  const action = h("select", {}, PREFIXES.map((p) => h("option", { value: p, selected: p === (params.get("action") || "") }, p ? p.replace(".*", "") : "all actions")));
  const actor = h("input", { type: "search", placeholder: "user or apikey:name", value: params.get("actor") || "", autocomplete: "off" });
  const since = h("input", { type: "date", value: params.get("since") || "" });
  const filters = h("form", { class: "audit-filters", role: "search" },
    field("Show", scope), field("Action", action), field("Actor", actor), field("Since", since));
  const table = h("div", { class: "panel table-wrap", id: "audit-list" });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  clear(ctx.el, filters, table, more);
  let cursor = null;
  let items = [];

  function url() {
    const q = new URLSearchParams({ limit: "50" });
    if (action.value) q.set("action", action.value);
    if (actor.value.trim()) q.set("actor", actor.value.trim());
    if (since.value) q.set("since", new Date(`${since.value}T00:00:00`).toISOString());
    if (cursor) q.set("cursor", cursor);
    return (scope.value === "all" ? "/api/v1/audit" : `/api/v1/tenants/${enc(ctx.tenant)}/audit`) + `?${q}`;
  }

  async function load(append) {
    if (!append) { cursor = null; items = []; }
    try {
      const page = await get(url());
      items = items.concat(page.items);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      render();
    } catch (err) {
      clear(table, banner("bad", errorText(err)));
    }
  }

  function render() {
    const all = scope.value === "all";
    clear(table, items.length ? h("table", { class: "cards audit" },
      h("thead", {}, h("tr", {}, ["Time", all ? "Tenant" : null, "Actor", "Action", "Details", "From"].filter(Boolean).map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, items.map((e) => h("tr", { dataset: { action: e.action } },
        h("td", { class: "nowrap", "data-label": "Time" }, fmtTime(e.at)),
        all ? h("td", { "data-label": "Tenant" }, e.tenant || h("span", { class: "muted" }, "installation")) : null,
        h("td", { "data-label": "Actor" }, e.actor),
        h("td", { "data-label": "Action" }, h("span", {}, badge(e.action.endsWith("_failed") ? "bad" : "", e.action))),
        h("td", { "data-label": "Details", class: "audit-detail" }, details(e.detail)),
        h("td", { class: "mono", "data-label": "From" }, e.source || "—")))))
      : h("p", { class: "empty" }, "No entries match."));
  }

  function sync() {
    const u = new URLSearchParams();
    if (ctx.tenant) u.set("tenant", ctx.tenant);
    if (scope.value === "all") u.set("scope", "all");
    if (action.value) u.set("action", action.value);
    if (actor.value.trim()) u.set("actor", actor.value.trim());
    if (since.value) u.set("since", since.value);
    history.replaceState(null, "", `/ui/audit?${u}`);
    load(false);
  }
  let timer;
  for (const el of [scope, action, since]) el.addEventListener("change", sync);
  actor.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(sync, 300); });
  filters.addEventListener("submit", (e) => { e.preventDefault(); sync(); });
  more.addEventListener("click", () => load(true));
  await load(false);
}

// A field diff as "field: before → after"; anything else as key: value.
function details(detail) {
  if (!detail) return h("span", { class: "muted" }, "—");
  const lines = [];
  for (const [k, v] of Object.entries(detail)) {
    if (k === "changes" && v && typeof v === "object") {
      for (const [f, c] of Object.entries(v)) {
        lines.push(h("li", {}, h("code", {}, f), ": ", Array.isArray(c) ? [show(c[0]), " → ", show(c[1])] : h("em", {}, String(c))));
      }
    } else if (k !== "was") {
      lines.push(h("li", {}, h("span", { class: "muted" }, `${k}: `), show(v)));
    }
  }
  return lines.length ? h("ul", { class: "diff" }, lines) : h("span", { class: "muted" }, "—");
}

function show(v) {
  if (v === null || v === undefined) return h("span", { class: "muted", title: "not set" }, "—");
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}
