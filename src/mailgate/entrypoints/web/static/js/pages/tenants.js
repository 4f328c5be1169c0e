// System → Tenants: create, rename (display name), delete.
import { get, post, patch, del, enc } from "../api.js";
import { h, clear, banner, toast, field, showErrors, clearErrors, fmtTime, busy, errorText, confirmDialog } from "../ui.js";
import { boot } from "../shell.js";

const ctx = await boot();
if (!ctx.systemAdmin) clear(ctx.el, banner("bad", "Only system administrators can see this page."));
else await main();
document.getElementById("main").dataset.ready = "1";

async function main() {
  const name = h("input", { type: "text", autocomplete: "off", placeholder: "acme", pattern: "[a-z0-9][a-z0-9-]*" });
  const display = h("input", { type: "text", autocomplete: "off", placeholder: "Acme A/S" });
  const create = h("button", { type: "submit", class: "primary" }, "Create tenant");
  const form = h("form", { class: "panel", novalidate: true, "aria-labelledby": "new-t" },
    h("h2", { id: "new-t" }, "New tenant"),
    h("div", { class: "grid" },
      field("Name", name, { path: "name", help: "Lower-case letters, digits and -; cannot be changed later." }),
      field("Display name", display, { path: "display_name" }),
      h("div", { class: "field" }, h("span", { class: "label" }, "\u00a0"), h("div", { class: "actions" }, create))));
  const list = h("div", { class: "panel table-wrap" });
  clear(ctx.el, form, list);

  async function load() {
    const items = (await get("/api/v1/tenants")).items;
    clear(list, h("h2", {}, "Tenants"), h("table", {},
      h("thead", {}, h("tr", {}, ["Name", "Display name", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, items.map((t) => {
        const edit = h("button", { type: "button", class: "small", "aria-label": `Rename ${t.name}` }, "Rename");
        const rm = h("button", { type: "button", class: "danger small", "aria-label": `Delete ${t.name}` }, "Delete");
        edit.addEventListener("click", async () => {
          const value = window.prompt(`Display name of ${t.name}`, t.display_name || "");
          if (value === null) return;
          try { await patch(`/api/v1/tenants/${enc(t.name)}`, { display_name: value.trim() }); toast("Saved"); await load(); } catch (err) { toast(errorText(err), "bad", 6000); }
        });
        rm.addEventListener("click", async () => {
          if (!(await confirmDialog(`Delete tenant "${t.name}"?`, "Its e-mail servers, messages, API keys and memberships are deleted too. This cannot be undone.", "Delete tenant", true))) return;
          try { await del(`/api/v1/tenants/${enc(t.name)}`); toast(`Deleted ${t.name}`); await load(); } catch (err) { toast(errorText(err), "bad", 6000); }
        });
        return h("tr", {}, h("td", {}, h("code", {}, t.name)), h("td", {}, t.display_name || ""), h("td", {}, fmtTime(t.created_at)), h("td", { class: "num" }, h("div", { class: "actions" }, edit, rm)));
      }))));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    busy(create, true, "Creating…");
    try {
      const r = await post("/api/v1/tenants", { name: name.value.trim(), display_name: display.value.trim() || null });
      name.value = ""; display.value = "";
      toast(`Created tenant ${r.name}`);
      await load();
    } catch (err) {
      const rest = showErrors(form, err.errors);
      if (rest.length || !err.errors.length) toast(errorText(err), "bad", 6000);
    }
    busy(create, false);
  });
  await load();
}
