// Workflow → E-mail servers: a ribbon with one tab per configuration (DEFAULT first) and "+".
import { get, post, put, patch, del, enc } from "../api.js";
import { h, clear, banner, toast, clearToasts, busy, errorText, confirmDialog, choiceDialog } from "../ui.js";
import { boot, needTenant, setDirtyCheck, tenantUrl } from "../shell.js";
import { ServerForm, emptyServer, remoteContext } from "../server_form/form.js";
import { oauthFlash } from "../server_form/oauth2_panel.js";

const ctx = await boot();
if (needTenant(ctx)) await main();

async function main() {
  const base = `/api/v1/tenants/${enc(ctx.tenant)}/email-servers`;
  const remote = ctx.canEditServers ? await remoteContext(ctx) : { clients: [], allowed: false };
  const state = { servers: [], current: null, draft: null, form: null, removing: false, newDefault: null };
  const flash = h("div", { id: "flash" });
  const ribbon = h("div", { class: "ribbon", role: "tablist", "aria-label": "E-mail server configurations" });
  const body = h("div", { id: "server-panel", role: "tabpanel" });
  const saveBtn = h("button", { type: "button", class: "primary", id: "save" }, "Save");
  const removeBtn = h("button", { type: "button", class: "danger", id: "remove" }, "Remove server");
  const status = h("span", { class: "status", "aria-live": "polite" });
  const savebar = h("div", { class: "savebar" }, status, removeBtn, saveBtn);
  clear(ctx.el, flash, ribbon, body, ctx.canEditServers ? savebar : null);

  const flashed = oauthFlash();
  if (flashed) clear(flash, flashed);

  const dirty = () => !!state.form && (state.form.isDirty() || state.removing);
  setDirtyCheck(dirty);

  async function load(select) {
    state.servers = (await get(base)).items;
    const want = select ?? ctx.item ?? state.servers[0]?.name;
    const found = state.servers.find((s) => s.name === want) || state.servers[0];
    if (found) open(found);
    else intro();
  }

  // An empty tenant: what a configuration is, and one button to start the first.
  function intro() {
    state.current = null;
    state.draft = null;
    state.form = null;
    renderRibbon();
    renderStatus();
    savebar.hidden = true;
    if (!ctx.canEditServers) { clear(body, banner("info", "This tenant has no e-mail server yet. An administrator can add one.")); return; }
    const start = h("button", { type: "button", class: "primary", id: "start-first" }, "Add the first e-mail server");
    start.addEventListener("click", () => openNew(true));
    clear(body, h("section", { class: "panel intro" },
      h("h2", {}, "No e-mail server yet"),
      h("p", {}, "An e-mail server configuration tells mailgate how this tenant's mail leaves: through an SMTP server (Exchange Online, Gmail, your own relay), Microsoft Graph or the Gmail API, with its login and the defaults for messages."),
      h("p", {}, "The first one is called DEFAULT and becomes the tenant's default: workflows that name no server send through it. Add more later with +."),
      h("div", { class: "actions" }, start)));
  }

  function renderRibbon() {
    const tabs = state.servers.map((s) => {
      const selected = state.current?.name === s.name;
      const label = selected && state.form ? state.form.name || "(no name)" : s.name;
      const t = h("button", { type: "button", role: "tab", "aria-selected": String(selected), tabindex: selected ? "0" : "-1", class: selected && state.removing ? "removed" : "", dataset: { server: s.name } },
        h("span", { class: "tab-label" }, label), s.is_default ? h("span", { class: "tab-badge", title: "Tenant default" }, "default") : null,
        statusBadges(s),
        selected && dirty() ? h("span", { class: "dirty-dot", title: "Unsaved changes" }) : null);
      t.addEventListener("click", () => switchTo(() => open(s)));
      return t;
    });
    if (state.draft) {
      const selected = state.current === null;
      tabs.push(h("button", { type: "button", role: "tab", "aria-selected": String(selected), tabindex: selected ? "0" : "-1", class: selected && state.removing ? "removed" : "", dataset: { server: "" } },
        h("span", { class: "tab-label" }, (selected && state.form?.name) || state.draft.name || "New server"), h("span", { class: "dirty-dot", title: "Not saved yet" })));
    }
    const add = ctx.canEditServers && (state.servers.length || state.draft) ? h("button", { type: "button", class: "add-tab", title: "New configuration", "aria-label": "New configuration" }, "+") : null;
    add?.addEventListener("click", () => switchTo(() => openNew(true)));
    clear(ribbon, tabs, add);
  }

  // What needs attention, on the tab itself: authorization, pauses, offline agents, failed tests.
  function statusBadges(s) {
    const out = [];
    const add = (kind, text, title) => out.push(h("span", { class: `tab-badge ${kind}`, title }, text));
    const st = s.oauth2_status?.state;
    if (st === "not_authorized") add("warn", "not authorized", "OAuth2: authorize this configuration before it can send");
    if (st === "needs_reauthorization" || st === "error") add("bad", "re-authorize", "OAuth2: the provider no longer accepts the token; mail waits");
    if (s.delivery?.state === "paused") add("warn", "paused", `Paused by the provider${s.delivery.paused_until ? ` until ${new Date(s.delivery.paused_until).toLocaleString()}` : ""}`);
    const rc = s.remote_output?.enabled ? s.remote_output.remote_client : null;
    if (rc && remote.connected?.[rc] === false) add("bad", "client offline", `Remote client ${rc} is not connected; mail waits`);
    if (s.last_test && s.last_test.ok === false) add("bad", "test failed", `Last test ${new Date(s.last_test.at).toLocaleString()}: ${s.last_test.step || ""} failed`);
    return out;
  }

  // Arrow keys move between tabs (WAI-ARIA tabs pattern).
  ribbon.addEventListener("keydown", (e) => {
    const tabs = [...ribbon.querySelectorAll("[role=tab], .add-tab")];
    const i = tabs.indexOf(document.activeElement);
    if (i < 0 || !["ArrowLeft", "ArrowRight", "Home", "End"].includes(e.key)) return;
    e.preventDefault();
    const j = e.key === "Home" ? 0 : e.key === "End" ? tabs.length - 1 : (i + (e.key === "ArrowRight" ? 1 : -1) + tabs.length) % tabs.length;
    tabs[j].focus();
  });

  async function switchTo(fn) {
    if (dirty() && !(await confirmDialog("Discard changes?", "This configuration has unsaved changes. Leave it without saving?", "Discard changes", true))) return;
    if (state.current !== null) state.draft = null;
    fn();
  }

  function open(server) {
    state.current = server;
    state.draft = null;
    mount(server, false);
    history.replaceState(null, "", tenantUrl(`/ui/email-servers/${enc(server.name)}`, ctx.tenant));
  }

  function openNew(focus = true) {
    state.current = null;
    state.draft = emptyServer(state.servers.length ? "" : "DEFAULT");
    mount(state.draft, true);
    history.replaceState(null, "", tenantUrl("/ui/email-servers", ctx.tenant));
    if (focus) body.querySelector("input[name=name]")?.focus();
  }

  function mount(value, isNew) {
    state.removing = false;
    state.newDefault = null;
    savebar.hidden = false;
    state.form = new ServerForm({
      value, isNew, isSystem: false,
      canEdit: ctx.canEditServers, canTest: ctx.canTest,
      apiBase: isNew ? null : `${base}/${enc(value.name)}`,
      collectionBase: base,
      presetsUrl: `/api/v1/tenants/${enc(ctx.tenant)}/limit-presets`,
      remoteClients: remote.clients, remoteAllowed: remote.allowed, remoteConnected: remote.connected,
      testTo: ctx.me.email || "",
      onChange: () => { renderRibbon(); renderStatus(); },
      onSubmit: () => { if (!saveBtn.disabled) save(); },
      onTested: async () => {
        try {
          const fresh = await get(`${base}/${enc(value.name)}`);
          const i = state.servers.findIndex((s) => s.name === value.name);
          if (i >= 0) state.servers[i] = { ...state.servers[i], last_test: fresh.last_test };
          state.form?.test.showLast(fresh.last_test);
          renderRibbon();
        } catch { /* the badge catches up on the next load */ }
      },
      onReload: () => load(value.name),
    });
    clear(body, ctx.canEditServers ? null : banner("info", "You can read this configuration; only administrators can change it."), state.form.el);
    renderRibbon();
    renderStatus();
  }

  function renderStatus() {
    removeBtn.textContent = state.removing ? "Undo remove" : state.current ? "Remove server" : "Discard new server";
    if (state.removing) {
      status.textContent = `"${state.current?.name || "New server"}" will be removed when you save.`;
      status.className = "status dirty";
    } else if (dirty()) {
      status.textContent = "Unsaved changes";
      status.className = "status dirty";
    } else {
      status.textContent = state.current ? `Saved ${new Date(state.current.updated_at).toLocaleString()}` : "";
      status.className = "status";
    }
    saveBtn.disabled = !dirty();
  }

  removeBtn.addEventListener("click", async () => {
    if (state.current === null) { await discardDraft(); return; }
    if (state.removing) {
      state.removing = false;
      state.newDefault = null;
      state.form.clearMessage();
    } else {
      const others = state.servers.filter((s) => s.name !== state.current.name);
      if (state.current.is_default && others.length) {
        // The default cannot go while others exist: choose its successor here, not at Save.
        const next = await choiceDialog(`Remove "${state.current.name}"?`,
          `"${state.current.name}" is this tenant's default server: messages that name no server go to it. Choose the server that becomes the default instead.`,
          "New default server", others.map((s) => s.name), "Make it the default and remove");
        if (!next) return;
        state.newDefault = next;
      }
      state.removing = true;
      state.form.message("warn", h("strong", {}, "Staged for removal. "),
        state.newDefault ? `When you press Save, "${state.newDefault}" becomes the default and this configuration is removed. ` : "This configuration is removed when you press Save. ",
        "Press Undo remove to keep it.");
    }
    renderRibbon();
    renderStatus();
  });

  // A new configuration that was never saved is simply dropped (nothing to stage).
  async function discardDraft() {
    if (state.form?.isDirty() && !(await confirmDialog("Discard the new server?", "Its settings were never saved and will be lost.", "Discard", true))) return;
    state.draft = null;
    state.form = null;
    if (state.servers.length) open(state.servers[0]);
    else intro();
  }

  saveBtn.addEventListener("click", save);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); if (!saveBtn.disabled) save(); }
  });

  async function save() {
    const form = state.form;
    clearToasts(); // an earlier "Not saved" must not outlive this attempt
    busy(saveBtn, true, "Saving…");
    let done = null; // [the confirmation, the server to show]
    try {
      if (state.removing) {
        let text = null;
        if (state.current) {
          if (state.newDefault) await patch(`${base}/${enc(state.newDefault)}`, { is_default: true });
          await del(`${base}/${enc(state.current.name)}`);
          text = state.newDefault ? `Removed ${state.current.name}; ${state.newDefault} is the default now` : `Removed ${state.current.name}`;
        }
        state.current = null;
        done = [text, null];
      } else if (state.current === null) {
        const saved = await post(base, form.body());
        done = [`Saved ${saved.name}`, saved.name];
      } else {
        const saved = await put(`${base}/${enc(state.current.name)}`, form.body());
        done = [`Saved ${saved.name}`, saved.name];
      }
    } catch (err) {
      const fieldErrors = err.status === 422 ? err.errors
        : err.status === 409 && !state.removing && /named/.test(err.message) ? [{ field: "name", message: err.message }] : null;
      if (fieldErrors) form.showErrors(fieldErrors);
      else form.message("bad", errorText(err));
      toast(fieldErrors ? "Not saved: please fix the marked fields." : `Not saved: ${errorText(err)}`, "bad", 6000);
    }
    if (done) {
      // The confirmation comes once the page shows what was saved.
      state.draft = null;
      state.form = null;
      try { await load(done[1]); } catch (err) { clear(body, banner("bad", errorText(err))); }
      if (done[0]) toast(done[0]);
    }
    busy(saveBtn, false);
    renderStatus();
  }

  try {
    await load();
  } catch (err) {
    clear(body, banner("bad", errorText(err)));
  }
  document.getElementById("main").dataset.ready = "1";
}
