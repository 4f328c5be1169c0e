// System → System e-mail server: the same form without the ribbon (one config, no name).
import { get, put, del } from "../api.js";
import { h, clear, banner, toast, clearToasts, busy, errorText, confirmDialog } from "../ui.js";
import { boot, setDirtyCheck } from "../shell.js";
import { ServerForm, emptyServer } from "../server_form/form.js";
import { oauthFlash } from "../server_form/oauth2_panel.js";

const ctx = await boot();
const URL_ = "/api/v1/system/email-server";
const body = h("div");
const saveBtn = h("button", { type: "button", class: "primary", id: "save" }, "Save");
const removeBtn = h("button", { type: "button", class: "danger", id: "remove" }, "Remove");
const status = h("span", { class: "status", "aria-live": "polite" });
let form = null;
let exists = false;
setDirtyCheck(() => !!form && form.isDirty());

async function load() {
  let value = null;
  try {
    value = await get(URL_);
    exists = true;
  } catch (err) {
    if (err.status !== 404) throw err;
    exists = false;
  }
  form = new ServerForm({
    value: value || emptyServer(), isNew: !exists, isSystem: true, canEdit: true, canTest: true,
    apiBase: URL_, testTo: ctx.me.email || "", onChange: renderStatus, onReload: load,
    onSubmit: () => { if (!saveBtn.disabled) save(); },
    onTested: async () => {
      try { form?.test.showLast((await get(URL_)).last_test); } catch { /* shown on the next load */ }
    },
  });
  clear(body, exists ? null : banner("info", "No system e-mail server yet. mailgate uses it for password reset links and token alerts."), form.el);
  renderStatus();
}

function renderStatus() {
  const d = form?.isDirty();
  status.textContent = d ? "Unsaved changes" : "";
  status.className = d ? "status dirty" : "status";
  saveBtn.disabled = !d;
  removeBtn.hidden = !exists;
}

saveBtn.addEventListener("click", () => save());
async function save() {
  clearToasts();
  busy(saveBtn, true, "Saving…");
  try {
    await put(URL_, form.body());
    toast("System e-mail server saved");
    await load();
  } catch (err) {
    if (err.status === 422) form.showErrors(err.errors);
    else form.message("bad", errorText(err));
    toast("Not saved", "bad");
  }
  busy(saveBtn, false);
  renderStatus();
}
removeBtn.addEventListener("click", async () => {
  if (!(await confirmDialog("Remove the system e-mail server?", "Password reset mails and token alerts cannot be sent without it.", "Remove", true))) return;
  try { await del(URL_); toast("System e-mail server removed"); await load(); } catch (err) { toast(errorText(err), "bad"); }
});

if (!ctx.systemAdmin) {
  clear(ctx.el, banner("bad", "Only system administrators can see this page."));
} else {
  clear(ctx.el, h("div", { id: "flash" }, oauthFlash()), body, h("div", { class: "savebar" }, status, removeBtn, saveBtn));
  try { await load(); } catch (err) { clear(body, banner("bad", errorText(err))); }
}
document.getElementById("main").dataset.ready = "1";
