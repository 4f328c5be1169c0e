// System → System settings.
import { get, put } from "../api.js";
import { h, clear, banner, toast, field, showErrors, clearErrors, busy, errorText, nextId } from "../ui.js";
import { boot } from "../shell.js";

const ctx = await boot();
if (!ctx.systemAdmin) clear(ctx.el, banner("bad", "Only system administrators can see this page."));
else await main();
document.getElementById("main").dataset.ready = "1";

async function main() {
  let s;
  try {
    s = await get("/api/v1/system/settings");
  } catch (err) {
    clear(ctx.el, banner(err.status === 404 ? "info" : "bad", err.status === 404 ? "System settings are not available on this installation yet." : errorText(err)));
    return;
  }
  const allow = h("input", { type: "checkbox", id: nextId("chk"), checked: !!s.allow_remote_clients });
  const base = h("input", { type: "url", value: s.public_base_url || "", placeholder: "https://mail.example.com" });
  const save = h("button", { type: "submit", class: "primary" }, "Save");
  const form = h("form", { class: "panel", novalidate: true },
    h("div", { class: "grid" },
      h("div", { class: "field wide", dataset: { fieldPath: "allow_remote_clients" } },
        h("label", { class: "check", for: allow.id }, allow, "Allow remote clients"),
        h("span", { class: "help" }, "Tenants may then deliver through agents inside their own networks."),
        h("p", { class: "field-error", dataset: { errorFor: "allow_remote_clients" } })),
      field("Public base URL", base, { path: "public_base_url", wide: true, help: "Used in links (password reset) and the default OAuth2 redirect URI." })),
    h("div", { class: "actions" }, h("span", { class: "spacer" }), save));
  clear(ctx.el, form);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    busy(save, true, "Saving…");
    try {
      await put("/api/v1/system/settings", { ...s, allow_remote_clients: allow.checked, public_base_url: base.value.trim() });
      toast("System settings saved");
    } catch (err) {
      const rest = showErrors(form, err.errors);
      toast(rest.length || !err.errors.length ? errorText(err) : "Not saved: please fix the marked fields.", "bad", 6000);
    }
    busy(save, false);
  });
}
