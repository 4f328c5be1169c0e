// System → Users: create and edit users, their per-tenant roles and the system admin flag.
import { get, post, patch, del, enc } from "../api.js";
import { h, clear, banner, toast, field, showErrors, clearErrors, badge, busy, errorText, confirmDialog, nextId } from "../ui.js";
import { boot } from "../shell.js";

const ctx = await boot();
const ROLES = { "": "—", admin: "Administrator", user: "User", read_only: "Read only" };
if (!ctx.systemAdmin) clear(ctx.el, banner("bad", "Only system administrators can see this page."));
else await main();
document.getElementById("main").dataset.ready = "1";

async function main() {
  const list = h("div", { class: "panel table-wrap" });
  const editor = h("div");
  const add = h("button", { type: "button", class: "primary" }, "New user");
  add.addEventListener("click", () => edit(null));
  clear(ctx.el, h("div", { class: "toolbar" }, add), editor, list);
  const tenants = ctx.tenants;

  async function load() {
    const users = (await get("/api/v1/users")).items;
    clear(list, h("h2", {}, "Users"), h("table", { class: "cards users" },
      h("thead", {}, h("tr", {}, ["User", "E-mail", "Roles", "Actions"].map((t) => h("th", { scope: "col", class: t === "Actions" ? "num" : null }, t)))),
      h("tbody", {}, users.map((u) => {
        const e = h("button", { type: "button", class: "small", "aria-label": `Edit ${u.username}` }, "Edit");
        e.addEventListener("click", () => edit(u));
        const rm = h("button", { type: "button", class: "danger small", "aria-label": `Delete ${u.username}` }, "Delete");
        rm.addEventListener("click", async () => {
          if (!(await confirmDialog(`Delete user "${u.username}"?`, "The user can no longer sign in.", "Delete user", true))) return;
          try { await del(`/api/v1/users/${enc(u.username)}`); toast(`Deleted ${u.username}`); await load(); } catch (err) { toast(errorText(err), "bad", 6000); }
        });
        const roles = Object.entries(u.roles || {}).map(([t, r]) => h("span", {}, badge("", `${t}: ${ROLES[r] || r}`), " "));
        return h("tr", {}, h("td", { "data-label": "User" }, h("span", {}, h("strong", {}, u.username), u.system_admin ? [" ", badge("queued", "system admin")] : null)),
          h("td", { "data-label": "E-mail" }, u.email || ""), h("td", { "data-label": "Roles" }, roles.length ? h("span", {}, roles) : h("span", { class: "muted" }, "none")),
          h("td", { class: "num", "data-label": "Actions" }, h("div", { class: "actions" }, e, rm)));
      }))));
  }

  function edit(user) {
    const isNew = !user;
    const username = h("input", { type: "text", autocomplete: "off", value: user?.username || "", disabled: !isNew });
    const email = h("input", { type: "email", autocomplete: "off", value: user?.email || "" });
    const password = h("input", { type: "password", autocomplete: "new-password" });
    const sa = h("input", { type: "checkbox", id: nextId("chk"), checked: !!user?.system_admin });
    const roleSelects = tenants.map((t) => {
      const sel = h("select", { "aria-label": `Role in ${t.name}`, dataset: { tenant: t.name } }, Object.entries(ROLES).map(([v, l]) => h("option", { value: v, selected: (user?.roles?.[t.name] || "") === v }, l)));
      return h("tr", {}, h("td", {}, t.display_name && t.display_name !== t.name ? `${t.display_name} (${t.name})` : t.name), h("td", {}, sel, h("p", { class: "field-error", dataset: { errorFor: `roles.${t.name}` } })));
    });
    const save = h("button", { type: "submit", class: "primary" }, isNew ? "Create user" : "Save");
    const cancel = h("button", { type: "button" }, "Cancel");
    const form = h("form", { class: "panel", novalidate: true, "aria-label": isNew ? "New user" : `Edit ${user.username}` },
      h("h2", {}, isNew ? "New user" : `Edit ${user.username}`),
      h("div", { class: "grid" },
        field("User name", username, { path: "username" }),
        field("E-mail", email, { path: "email", help: "Needed for password reset links." }),
        field(isNew ? "Password" : "New password", password, { path: "password", help: isNew ? "At least 8 characters." : "Leave empty to keep the current password." }),
        h("div", { class: "field", dataset: { fieldPath: "system_admin" } }, h("span", { class: "label" }, "Installation"), h("label", { class: "check", for: sa.id }, sa, "System administrator"), h("p", { class: "field-error", dataset: { errorFor: "system_admin" } }))),
      h("h3", {}, "Roles per tenant"),
      h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Tenant"), h("th", { scope: "col" }, "Role"))), h("tbody", {}, roleSelects))),
      h("p", { class: "field-error", dataset: { errorFor: "roles" } }),
      h("div", { class: "actions" }, save, cancel));
    cancel.addEventListener("click", () => clear(editor));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors(form);
      const roles = {};
      form.querySelectorAll("select[data-tenant]").forEach((s) => { if (s.value) roles[s.dataset.tenant] = s.value; });
      const body = { email: email.value.trim() || null, roles, system_admin: sa.checked };
      if (password.value) body.password = password.value;
      busy(save, true, "Saving…");
      try {
        if (isNew) await post("/api/v1/users", { username: username.value.trim(), ...body });
        else await patch(`/api/v1/users/${enc(user.username)}`, body);
        toast(isNew ? `Created ${username.value.trim()}` : `Saved ${user.username}`);
        clear(editor);
        await load();
      } catch (err) {
        const rest = showErrors(form, err.errors);
        toast(rest.length || !err.errors.length ? errorText(err) : "Not saved: please fix the marked fields.", "bad", 6000);
        busy(save, false);
      }
    });
    clear(editor, form);
    (isNew ? username : email).focus();
  }
  await load();
}
