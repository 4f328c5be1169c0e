// Administration → API keys of the tenant: create (token shown once), list, revoke.
import { get, post, del, enc } from "../api.js";
import { h, clear, banner, toast, field, showErrors, clearErrors, fmtTime, badge, busy, errorText, confirmDialog, tokenDialog } from "../ui.js";
import { boot, needTenant } from "../shell.js";

const ctx = await boot();
const ROLES = { web_service: "Web service (send, read own messages)", user: "User (send and read)", read_only: "Read only", admin: "Administrator" };

if (needTenant(ctx)) {
  if (!ctx.isAdmin) clear(ctx.el, banner("info", "Only administrators of this tenant manage API keys."));
  else await main();
}
document.getElementById("main").dataset.ready = "1";

async function main() {
  const base = `/api/v1/tenants/${enc(ctx.tenant)}/api-keys`;
  const name = h("input", { type: "text", autocomplete: "off", placeholder: "e.g. erp" });
  const role = h("select", {}, Object.entries(ROLES).map(([v, l]) => h("option", { value: v }, l)));
  const create = h("button", { type: "submit", class: "primary" }, "Create API key");
  const form = h("form", { class: "panel", novalidate: true, "aria-labelledby": "new-key" },
    h("h2", { id: "new-key" }, "New API key"),
    h("p", { class: "section-note" }, "Workflows send mail with an API key as a bearer token: Authorization: Bearer <token>."),
    h("div", { class: "grid" }, field("Name", name, { path: "name" }), field("Role", role, { path: "role" }),
      h("div", { class: "field" }, h("span", { class: "label" }, "\u00a0"), h("div", { class: "actions" }, create))));
  const list = h("div", { class: "panel table-wrap" });
  clear(ctx.el, form, list);

  async function load() {
    const keys = (await get(base)).items;
    clear(list, h("h2", {}, "Keys"), keys.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Role", "Created", "Last used", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, keys.map((k) => {
        const revoke = h("button", { type: "button", class: "danger small", "aria-label": `Revoke ${k.name}` }, "Revoke");
        revoke.addEventListener("click", async () => {
          if (!(await confirmDialog(`Revoke "${k.name}"?`, "Workflows using this key stop working at once.", "Revoke", true))) return;
          try { await del(`${base}/${enc(k.id)}`); toast(`Revoked ${k.name}`); await load(); } catch (err) { toast(errorText(err), "bad"); }
        });
        return h("tr", {}, h("td", {}, k.name), h("td", {}, badge("", (ROLES[k.role] || k.role).split(" (")[0])), h("td", {}, fmtTime(k.created_at), h("div", { class: "muted" }, k.created_by || "")), h("td", {}, fmtTime(k.last_used_at)), h("td", { class: "num" }, revoke));
      })))
      : h("p", { class: "empty" }, "No API keys yet."));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    busy(create, true, "Creating…");
    try {
      const r = await post(base, { name: name.value.trim(), role: role.value });
      name.value = "";
      await load();
      busy(create, false);
      toast(`Created ${r.name}`);
      await tokenDialog(`API key "${r.name}"`, r.token);
    } catch (err) {
      busy(create, false);
      const rest = showErrors(form, err.errors);
      if (rest.length || !err.errors.length) toast(errorText(err), "bad", 6000);
    }
  });
  await load();
}
