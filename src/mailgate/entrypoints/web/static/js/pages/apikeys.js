// Administration → API keys of the tenant: create (token shown once), list, revoke.
import { get, post, del, enc } from "../api.js";
import { h, clear, banner, toast, field, showErrors, clearErrors, fmtTime, badge, busy, errorText, confirmDialog, tokenDialog } from "../ui.js";
import { boot, needTenant } from "../shell.js";

const ctx = await boot();
const ROLES = { web_service: "Web service", user: "User", read_only: "Read only", admin: "Administrator" };

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
    h("div", { class: "grid" }, field("Name", name, { path: "name" }), field("Role", role, { path: "role", help: "Web service: send, and read its own messages. User: send and read all. Read only: read. Administrator: everything in this tenant." }),
      h("div", { class: "field" }, h("span", { class: "label" }, "\u00a0"), h("div", { class: "actions" }, create))));
  const list = h("div", { class: "panel table-wrap" });
  const smtp = h("section", { class: "panel", id: "smtp-submission", "aria-labelledby": "smtp-head" });
  clear(ctx.el, form, list, smtp);
  smtpPanel(smtp, `/api/v1/tenants/${enc(ctx.tenant)}/smtp-submission`).catch((err) => clear(smtp, banner("bad", errorText(err))));

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

// How to point an application (printer, ERP, script) at mailgate over SMTP: host, port, TLS,
// user name, and that the password is one of these keys (README "SMTP submission").
async function smtpPanel(panel, url) {
  const s = await get(url);
  const head = h("h2", { id: "smtp-head" }, "Send over SMTP");
  const note = h("p", { class: "section-note" }, "Printers, scanners and applications that only speak SMTP hand their mail to mailgate with these settings; mailgate stores it and delivers it through this tenant's e-mail servers, with the same hold, retries and diagnosis.");
  if (!s.enabled) {
    clear(panel, head, note, banner("info", "SMTP submission is off on this installation: the administrator enables it with MAILGATE_SMTP_LISTEN (see the README, \"SMTP submission\")."));
    return;
  }
  const security = s.starttls
    ? `STARTTLS on port ${s.port}${s.implicit_tls_port ? `, or SSL/TLS on port ${s.implicit_tls_port}` : ""}; required for AUTH from other machines`
    : s.implicit_tls_port ? `SSL/TLS on port ${s.implicit_tls_port}${s.port ? `; port ${s.port} only for applications on this machine (no TLS)` : ""}`
    : "None: AUTH works only for applications on this machine (a certificate, MAILGATE_SMTP_TLS_CERT_FILE, lets other machines sign in)";
  const rows = [
    ["SMTP server", copyValue(s.host)],
    ["Port", copyValue(String(s.port ?? s.implicit_tls_port))],
    ["Security", security],
    ["Authentication", `${s.mechanisms.join(" or ")}, required`],
    ["User name", copyValue(s.username)],
    ["Password", "an API key of this tenant (above); the role Web service is enough, and each application should get its own"],
    ["Options", h("span", {}, "optional headers, removed before delivery: ", h("code", {}, "X-Mailgate-Server: NAME"), ", ", h("code", {}, "X-Mailgate-Hold: yes"), ", ", h("code", {}, "X-Mailgate-Priority: high"), ", ", h("code", {}, "X-Mailgate-Metadata-order: 42"))],
  ];
  clear(panel, head, note,
    s.local_only ? banner("info", "The listener accepts applications on this machine only (it listens on loopback).") : null,
    s.running === false ? banner("warn", "The listener is configured but not listening (its port was taken when mailgate started: see the server log).") : null,
    h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("p", { class: "muted" }, "Recipients are the RCPT TO addresses, so Bcc works. \"250 2.0.0 queued as <id>\" means stored; the id is the message's id on the Messages page."));
}

function copyValue(value) {
  const b = h("button", { type: "button", class: "small copy", "aria-label": `Copy ${value}` }, "Copy");
  b.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(value); toast("Copied to the clipboard"); } catch { toast("Copy failed: select the text instead", "bad"); }
  });
  return h("span", { class: "copy-value" }, h("code", {}, value), b);
}
