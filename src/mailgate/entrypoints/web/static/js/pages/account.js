// You → My account: who you are, your roles, and changing your own password.
import { post } from "../api.js";
import { h, clear, field, showErrors, clearErrors, badge, busy, errorText, banner } from "../ui.js";
import { boot } from "../shell.js";

const ROLES = { admin: "Administrator", user: "User", read_only: "Read only", web_service: "Web service" };
const ctx = await boot();
main();
document.getElementById("main").dataset.ready = "1";

function main() {
  const me = ctx.me;
  const roles = Object.entries(me.roles || {});
  const current = h("input", { type: "password", autocomplete: "current-password" });
  const next = h("input", { type: "password", autocomplete: "new-password", minlength: "8" });
  const again = h("input", { type: "password", autocomplete: "new-password" });
  const save = h("button", { type: "submit", class: "primary" }, "Change password");
  const note = h("div");
  const form = h("form", { class: "panel", novalidate: true, "aria-labelledby": "pw-title" },
    h("h2", { id: "pw-title" }, "Change your password"),
    h("p", { class: "section-note" }, "Every session of yours ends, this one too: you sign in again with the new password."),
    note,
    h("div", { class: "grid" },
      field("Current password", current, { path: "current_password" }),
      field("New password", next, { path: "new_password", help: "At least 8 characters." }),
      field("Repeat the new password", again, { path: "new_password_again" })),
    h("div", { class: "actions form-actions" }, save));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors(form);
    clear(note);
    if (next.value !== again.value) {
      showErrors(form, [{ field: "new_password_again", message: "the two new passwords differ" }]);
      return;
    }
    busy(save, true, "Changing…");
    try {
      await post("/api/v1/auth/password", { current_password: current.value, new_password: next.value }, { signOutOn401: false });
      location.assign("/ui/login?password=changed");
    } catch (err) {
      busy(save, false);
      const rest = showErrors(form, err.errors);
      if (rest.length || !err.errors.length) clear(note, banner("bad", errorText(err)));
    }
  });
  clear(ctx.el,
    h("section", { class: "panel" }, h("h2", {}, "You"),
      h("dl", { class: "kv" },
        h("dt", {}, "User name"), h("dd", {}, me.username),
        h("dt", {}, "E-mail"), h("dd", {}, me.email || h("span", { class: "muted" }, "none: password reset links cannot reach you (a system administrator can add one)")),
        h("dt", {}, "Roles"), h("dd", {}, me.system_admin ? [badge("queued", "system administrator"), " "] : null,
          roles.length ? roles.map(([t, r]) => [badge("", `${t}: ${ROLES[r] || r}`), " "]) : (me.system_admin ? null : h("span", { class: "muted" }, "none"))))),
    form);
}
