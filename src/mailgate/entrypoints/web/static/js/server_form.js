// The e-mail server form, shared by the tenant page (with its ribbon) and the system server
// page (no ribbon). Inputs are bound to dotted API paths, so problem+json `errors[].field`
// lands next to the input it names.
import { post, postStream, del, get } from "./api.js";
import { h, clear, field, showErrors, clearErrors, banner, badge, fmtTime, toast, busy, errorText, nextId } from "./ui.js";

export const DEFAULT_PORTS = { smtp: 587, smtps: 465 };
const TEST_STEPS = ["resolve", "connect", "tls", "ehlo", "auth", "mail_from", "rcpt_to", "data"];
const OAUTH_PROVIDERS = { microsoft: "Microsoft 365 / Office 365", google: "Google Workspace / Gmail", custom: "Other (custom endpoints)" };

export function emptyServer(name = "") {
  return {
    name, is_default: false, protocol: "smtp", host: "", port: 587, starttls: "required",
    tls: { verify: true, ca_certificates_pem: null, client_certificate_pem: null, client_key_set: false },
    helo_name: null, timeouts: { connect_s: 15, command_s: 60 },
    limits: { max_connections: 3, messages_per_minute: null, max_message_bytes: null },
    authentication: { method: "none" },
    message_defaults: { from_address: null, from_name: null, reply_to: null, envelope_from: null, cc: [], bcc: [], subject: null, body_text: null, body_html: null, headers: {} },
    remote_output: { enabled: false, remote_client: null },
  };
}

const getPath = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) o = o[k] ??= {};
  o[keys.at(-1)] = value;
}

const CONVERT = {
  text: { toInput: (v) => v ?? "", fromInput: (s) => (s.trim() === "" ? null : s.trim()) },
  raw: { toInput: (v) => v ?? "", fromInput: (s) => (s.trim() === "" ? null : s) },
  int: { toInput: (v) => v ?? "", fromInput: (s) => (s.trim() === "" ? null : Number(s)) },
  list: { toInput: (v) => (v || []).join(", "), fromInput: (s) => s.split(/[,;\n]/).map((x) => x.trim()).filter(Boolean) },
  headers: {
    toInput: (v) => Object.entries(v || {}).map(([k, x]) => `${k}: ${x}`).join("\n"),
    fromInput: (s) => Object.fromEntries(s.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
      const i = l.indexOf(":");
      return i < 0 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()];
    })),
  },
};

export class ServerForm {
  /**
   * opts: value (API view or emptyServer()), isNew, isSystem, canEdit, canTest, apiBase (the
   * resource URL once saved), collectionBase (tenant servers: the list URL, to test a new
   * config), remoteClients (names), remoteAllowed, testTo, onChange, onReload.
   */
  constructor(opts) {
    this.o = opts;
    this.v = structuredClone(opts.value);
    this.secrets = {};
    this.inputs = [];
    this.portEdited = !opts.isNew && this.v.port !== DEFAULT_PORTS[this.v.protocol];
    this.el = h("form", { class: "server-form", novalidate: true, "aria-label": "E-mail server settings" });
    this.el.addEventListener("submit", (e) => e.preventDefault());
    this.topBanner = h("div", { class: "form-banner" });
    this.build();
    this.initial = this.snapshot();
    this.sync();
  }

  // ---- binding --------------------------------------------------------------------------

  bind(path, input, kind = "text") {
    const conv = CONVERT[kind] || null;
    const isCheck = input.type === "checkbox";
    const value = getPath(this.v, path);
    if (isCheck) input.checked = !!value;
    else input.value = conv ? conv.toInput(value) : value ?? "";
    input.disabled = !this.o.canEdit;
    input.name = path;
    const ev = input.tagName === "SELECT" || isCheck ? "change" : "input";
    input.addEventListener(ev, () => {
      setPath(this.v, path, isCheck ? input.checked : conv ? conv.fromInput(input.value) : input.value);
      this.changed(path);
    });
    this.inputs.push(input);
    return input;
  }

  text(label, path, opts = {}) {
    const input = h("input", { type: opts.type || "text", placeholder: opts.placeholder, autocomplete: "off", spellcheck: "false", inputmode: opts.inputmode });
    return field(label, this.bind(path, input, opts.kind || "text"), { path, help: opts.help, wide: opts.wide });
  }

  select(label, path, options, opts = {}) {
    const sel = h("select", {}, Object.entries(options).map(([v, l]) => h("option", { value: v }, l)));
    return field(label, this.bind(path, sel, "raw"), { path, help: opts.help, wide: opts.wide });
  }

  check(label, path, help) {
    const input = h("input", { type: "checkbox", id: nextId("chk") });
    this.bind(path, input);
    const err = h("p", { class: "field-error", dataset: { errorFor: path } });
    return h("div", { class: "field", dataset: { fieldPath: path } },
      h("label", { class: "check", for: input.id }, input, label), help ? h("span", { class: "help" }, help) : null, err);
  }

  // A write-only secret: "set" with a change action, or an input. Never a value.
  secret(label, path, setFlag, help) {
    const wrap = h("div", { class: "field", dataset: { fieldPath: path } });
    const err = h("p", { class: "field-error", dataset: { errorFor: path } });
    const id = nextId("secret");
    const render = () => {
      const isSet = !!getPath(this.v, setFlag);
      const changing = path in this.secrets;
      if (isSet && !changing) {
        const change = h("button", { type: "button", class: "small", disabled: !this.o.canEdit }, "Change");
        change.addEventListener("click", () => { this.secrets[path] = ""; render(); wrap.querySelector("input")?.focus(); this.changed(path); });
        clear(wrap, h("span", { class: "label", id }, label), h("div", { class: "secret-set", "aria-labelledby": id }, badge("ok", "set"), h("span", { class: "muted" }, "stored encrypted"), this.o.canEdit ? change : null), err);
      } else {
        const input = h("input", { type: "password", id, autocomplete: "new-password", name: path, disabled: !this.o.canEdit, placeholder: isSet ? "new value" : "" });
        input.value = this.secrets[path] || "";
        input.addEventListener("input", () => { this.secrets[path] = input.value; this.changed(path); });
        const keep = isSet ? h("button", { type: "button", class: "link" }, "keep the stored value") : null;
        keep?.addEventListener("click", () => { delete this.secrets[path]; render(); this.changed(path); });
        clear(wrap, h("label", { for: id }, label), input, help || keep ? h("span", { class: "help" }, help || "", keep ? " " : "", keep) : null, err);
      }
    };
    render();
    return wrap;
  }

  pem(label, path, help) {
    const ta = h("textarea", { class: "pem", placeholder: "-----BEGIN CERTIFICATE-----", spellcheck: "false" });
    const info = h("div", { class: "cert-info", hidden: true, "aria-live": "polite" });
    const fileId = nextId("file");
    const file = h("input", { type: "file", id: fileId, accept: ".pem,.crt,.cer,.txt", hidden: true });
    const upload = h("button", { type: "button", class: "small", disabled: !this.o.canEdit }, "Upload PEM file…");
    upload.addEventListener("click", () => file.click());
    file.addEventListener("change", async () => {
      const f = file.files[0];
      if (!f) return;
      ta.value = await f.text();
      ta.dispatchEvent(new Event("input"));
      file.value = "";
    });
    const f = field(label, this.bind(path, ta, "raw"), { path, help: this.o.canEdit ? help : null, wide: true });
    if (!this.o.canEdit) ta.placeholder = "none";
    if (this.o.canEdit) f.append(h("div", { class: "actions" }, upload, file));
    f.append(info);
    let timer;
    const inspect = async () => {
      const pem = ta.value.trim();
      if (!pem) { info.hidden = true; return; }
      try {
        const r = await post("/api/v1/certificates/inspect", { pem });
        info.className = "cert-info";
        clear(info, r.certificates.map((c) => h("div", {},
          h("strong", {}, c.subject), c.self_signed ? " (self-signed)" : ` · issued by ${c.issuer}`, h("br"),
          c.expired ? badge("bad", "expired") : badge("ok", "valid"), ` until ${fmtTime(c.not_after)}`)));
      } catch (err) {
        info.className = "cert-info bad";
        clear(info, err.errors?.[0]?.message || errorText(err));
      }
      info.hidden = false;
    };
    ta.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(inspect, 400); });
    if (ta.value.trim()) inspect();
    return f;
  }

  // ---- layout ---------------------------------------------------------------------------

  section(title, note, ...content) {
    const id = nextId("sec");
    return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), note ? h("p", { class: "section-note" }, note) : null, ...content);
  }

  build() {
    const o = this.o;
    const parts = [this.topBanner];
    if (o.value.secrets_error) this.message("bad", h("strong", {}, "Stored secrets unreadable. "), o.value.secrets_error);
    if (!o.isSystem) {
      const isDefault = o.value.is_default && !o.isNew;
      const def = this.check("Default server of this tenant", "is_default", isDefault ? "To change it, make another server the default." : "Used when a message names no server.");
      if (isDefault) def.querySelector("input").disabled = true;
      parts.push(this.section("Name", "Workflows choose a configuration by this name.",
        h("div", { class: "grid" },
          this.text("Name", "name", { placeholder: "e.g. DEFAULT or invoices", help: "Letters, digits, - and _." }), def)));
    }
    this.starttlsField = this.select("STARTTLS", "starttls", { required: "Required (refuse without TLS)", opportunistic: "Opportunistic (use TLS when offered)", disabled: "Disabled (never; plain text)" }, { help: "Only for SMTP; SMTPS is encrypted from the start." });
    this.portInput = h("input", { type: "number", min: "1", max: "65535", inputmode: "numeric" });
    this.bind("port", this.portInput, "int");
    this.portInput.addEventListener("input", () => { this.portEdited = this.portInput.value.trim() !== ""; this.portHelp(); });
    this.portField = field("Port", this.portInput, { path: "port" });
    this.portHelpEl = this.portField.querySelector(".help") || h("span", { class: "help" });
    this.portField.insertBefore(this.portHelpEl, this.portField.querySelector(".field-error"));
    const proto = this.select("Protocol", "protocol", { smtp: "SMTP (STARTTLS, port 587)", smtps: "SMTPS (implicit TLS, port 465)" });
    proto.querySelector("select").addEventListener("change", () => {
      if (!this.portEdited) {
        this.v.port = DEFAULT_PORTS[this.v.protocol];
        this.portInput.value = this.v.port;
      }
    });
    parts.push(this.section("Protocol and host", null,
      h("div", { class: "grid" },
        proto,
        this.text("Host", "host", { placeholder: "smtp.office365.com" }),
        this.portField,
        this.starttlsField),
      h("details", { class: "advanced" }, h("summary", {}, "Connection details"),
        h("div", { class: "grid" },
          this.text("HELO/EHLO name", "helo_name", { help: "Default: this machine's name." }),
          this.text("Connect timeout (s)", "timeouts.connect_s", { kind: "int", type: "number" }),
          this.text("Command timeout (s)", "timeouts.command_s", { kind: "int", type: "number" }),
          this.text("Max. connections", "limits.max_connections", { kind: "int", type: "number", help: "Office 365 allows 3 per mailbox." }),
          this.text("Messages per minute", "limits.messages_per_minute", { kind: "int", type: "number", help: "Empty: no limit. Office 365: 30." }),
          this.text("Max. message size (bytes)", "limits.max_message_bytes", { kind: "int", type: "number", help: "Empty: the installation's limit." })))));

    this.clientKey = this.secret("Client key (PEM)", "tls.client_key_pem", "tls.client_key_set", "Unencrypted PEM private key of the client certificate.");
    parts.push(this.section("Certificates", "Trust a company CA or a self-signed server certificate, and optionally present a client certificate.",
      h("div", { class: "grid" },
        this.check("Verify the server certificate and host name", "tls.verify", "Turn off only for a test server."),
        this.pem("Trusted CA or server certificates (PEM)", "tls.ca_certificates_pem", "Paste one or more certificates, or upload a .pem file."),
        this.pem("Client certificate (PEM)", "tls.client_certificate_pem", "For servers that require mutual TLS."),
        this.clientKey)));

    parts.push(this.buildAuth());

    parts.push(this.section("Message defaults", "Used when a message leaves these out.",
      h("div", { class: "grid" },
        this.text("From address", "message_defaults.from_address", { type: "email", placeholder: "noreply@example.com" }),
        this.text("From name", "message_defaults.from_name"),
        this.text("Reply-To", "message_defaults.reply_to", { type: "email" }),
        this.text("Envelope sender (MAIL FROM)", "message_defaults.envelope_from", { type: "email", help: "Default: the From address." }),
        this.text("Cc", "message_defaults.cc", { kind: "list", help: "Comma-separated addresses." }),
        this.text("Bcc", "message_defaults.bcc", { kind: "list", help: "Comma-separated addresses." }),
        this.text("Subject", "message_defaults.subject", { wide: true }),
        field("Extra headers", this.bind("message_defaults.headers", h("textarea", { placeholder: "X-Mailer-Group: finance" }), "headers"), { path: "message_defaults.headers", help: "One 'Name: value' per line.", wide: true }),
        field("Text body", this.bind("message_defaults.body_text", h("textarea"), "raw"), { path: "message_defaults.body_text", wide: true }))));

    if (!o.isSystem) parts.push(this.buildRemote());
    parts.push(this.buildTest());
    this.el.append(...parts);
  }

  buildAuth() {
    const method = h("div", { class: "radios", role: "radiogroup", "aria-label": "Authentication method" });
    for (const [v, l] of Object.entries({ none: "None", password: "User and password", oauth2: "OAuth2" })) {
      const r = h("input", { type: "radio", name: `auth-method-${this.o.isSystem ? "sys" : "srv"}`, value: v, id: nextId("m"), checked: this.v.authentication.method === v, disabled: !this.o.canEdit });
      r.addEventListener("change", () => { if (r.checked) { this.v.authentication.method = v; this.changed("authentication.method"); } });
      method.append(h("label", { class: "check", for: r.id }, r, l));
    }
    this.pwBlock = h("div", { class: "grid" },
      this.text("User name", "authentication.username", { placeholder: "sender@example.com" }),
      this.secret("Password", "authentication.password", "authentication.password_set"));
    const a = "authentication.";
    this.msTenantField = this.text("Directory (tenant) ID", a + "directory_tenant_id", { help: "Microsoft Entra tenant ID or domain." });
    this.customFields = h("div", { class: "grid wide" },
      this.text("Authorize URL", a + "authorize_url", { placeholder: "https://…/authorize" }),
      this.text("Token URL", a + "token_url", { placeholder: "https://…/token" }),
      this.text("Scope", a + "scope", { help: "Empty: the provider's default." }));
    this.oauthBlock = h("div", {},
      h("div", { class: "grid" },
        this.select("Provider", a + "provider", { "": "Choose…", ...OAUTH_PROVIDERS }),
        this.select("Grant", a + "grant", { "": "Choose…", authorization_code: "Authorization code (a person signs in once)", client_credentials: "Client credentials (app permission)" }),
        this.text("Mailbox", a + "username", { placeholder: "sender@contoso.com", help: "The mailbox XOAUTH2 signs in as." }),
        this.msTenantField,
        this.text("Client (application) ID", a + "client_id"),
        this.secret("Client secret", a + "client_secret", a + "client_secret_set"),
        this.text("Redirect URI", a + "redirect_uri", { help: "Register this URI with the provider. Empty: mailgate's default.", wide: true }),
        this.customFields),
      this.oauthStatus = h("div", { class: "oauth-status" }));
    return this.section("Authentication", null,
      h("fieldset", {}, h("legend", {}, "Method"), method),
      h("p", { class: "field-error", dataset: { errorFor: "authentication.method" } }),
      h("div", { class: "auth-detail" }, this.pwBlock, this.oauthBlock));
  }

  renderOauthStatus() {
    const st = this.o.value.oauth2_status;
    const auth = this.v.authentication;
    const saved = !this.o.isNew && this.o.value.authentication?.method === "oauth2";
    const box = this.oauthStatus;
    if (!saved) { clear(box, h("p", { class: "muted" }, "Save the configuration, then authorize it here.")); return; }
    const code = auth.grant === "authorization_code";
    const needs = st?.state === "needs_reauthorization" || st?.state === "error";
    const authorize = h("button", { type: "button", class: needs || st?.state === "not_authorized" ? "primary" : "", disabled: !this.o.canEdit }, code ? (st?.state === "authorized" ? "Authorize again" : "Authorize") : "Get a token now");
    authorize.addEventListener("click", () => this.authorize(code, authorize));
    const forget = h("button", { type: "button", class: "danger small", disabled: !this.o.canEdit }, "Forget tokens");
    forget.addEventListener("click", async () => {
      try { await del(`${this.o.apiBase}/oauth2`); toast("Tokens forgotten"); this.o.onReload?.(); } catch (err) { toast(errorText(err), "bad"); }
    });
    clear(box, h("h3", {}, "Authorization"),
      needs ? banner("bad", h("strong", {}, "Re-authorization needed. "), st.last_error || "The provider no longer accepts the stored token. Mail to this server waits until someone authorizes again.") : null,
      st?.warning ? banner("warn", st.warning) : null,
      h("dl", { class: "kv" },
        h("dt", {}, "Status"), h("dd", {}, badge(st?.state || "not_authorized")),
        h("dt", {}, "Mailbox"), h("dd", {}, this.o.value.authentication.username || "—"),
        h("dt", {}, "Access token valid until"), h("dd", {}, fmtTime(st?.access_token_expires_at)),
        h("dt", {}, "Last refreshed"), h("dd", {}, fmtTime(st?.refresh_token_last_used_at)),
        st?.last_error && !needs ? [h("dt", {}, "Last error"), h("dd", {}, st.last_error)] : null),
      this.o.canEdit ? h("div", { class: "actions" }, authorize, st?.state && st.state !== "not_authorized" ? forget : null) : null);
  }

  async authorize(code, button) {
    if (this.isDirty()) { toast("Save your changes first, then authorize.", "bad"); return; }
    busy(button, true, code ? "Opening the provider…" : "Getting a token…");
    try {
      if (code) {
        const r = await post(`${this.o.apiBase}/oauth2/authorize`);
        location.assign(r.authorization_url);
        return;
      }
      await post(`${this.o.apiBase}/oauth2/refresh`);
      toast("Token received");
      this.o.onReload?.();
    } catch (err) {
      toast(errorText(err), "bad", 8000);
    }
    busy(button, false);
  }

  buildRemote() {
    const clients = this.o.remoteClients || [];
    const usable = this.o.remoteAllowed && clients.length > 0;
    const note = !this.o.remoteAllowed
      ? "Remote clients are not allowed on this installation (a system administrator can allow them in System settings)."
      : clients.length ? "Deliver through a remote client inside the customer's network." : "This tenant has no remote client yet. Add one under Administration → Remote clients.";
    const sel = h("select", {}, h("option", { value: "" }, "Choose…"), clients.map((c) => h("option", { value: c }, c)));
    const f = this.section("Remote output", note,
      h("div", { class: "grid" }, this.check("Deliver through a remote client", "remote_output.enabled"),
        field("Remote client", this.bind("remote_output.remote_client", sel, "text"), { path: "remote_output.remote_client" })));
    if (!usable) f.querySelectorAll("input, select").forEach((i) => { i.disabled = true; });
    this.remoteUsable = usable;
    return f;
  }

  buildTest() {
    const to = h("input", { type: "email", placeholder: "you@example.com", autocomplete: "email" });
    to.value = this.o.testTo || "";
    this.testTo = to;
    const send = h("button", { type: "button", class: "primary" }, "Send test email");
    const dry = h("button", { type: "button" }, "Dry run");
    this.testOut = h("div", { class: "test-result", "aria-live": "polite" });
    send.addEventListener("click", () => this.runTest("send", send));
    dry.addEventListener("click", () => this.runTest("dry_run", dry));
    this.testButtons = [send, dry];
    if (!this.o.canTest) return h("div");
    return this.section("Send test e-mail", "Connects with these settings and reports each step. A dry run stops before sending the message.",
      h("div", { class: "test-row" }, field("Send test e-mail to", to, { path: "to" }), h("div", { class: "actions" }, send, dry)),
      this.testOut);
  }

  async runTest(mode, button) {
    clearErrors(this.testOut.parentElement);
    const to = this.testTo.value.trim();
    if (mode === "send" && !to && !this.v.message_defaults?.from_address) {
      showErrors(this.testOut.parentElement, [{ field: "to", message: "enter an address to send the test e-mail to" }]);
      return;
    }
    // An unsaved new configuration is tested by sending it along (API.md "Test and diagnose").
    const path = this.o.isNew && this.o.collectionBase
      ? `${this.o.collectionBase}/${encodeURIComponent(this.name || "new")}/test`
      : `${this.o.apiBase}/test`;
    const steps = mode === "dry_run" ? TEST_STEPS.slice(0, -1) : TEST_STEPS;
    const list = h("ol", { class: "steps", "aria-label": "Test steps" }, steps.map((s, i) => h("li", { class: "pending", dataset: { step: s } },
      h("span", { class: "name" }, s), h("span", { class: "result" }, i === 0 ? h("span", { class: "spinner", "aria-label": "running" }) : "waiting"), h("span", { class: "detail" }), h("span", { class: "ms" }))));
    clear(this.testOut, list);
    list.scrollIntoView({ block: "nearest" }); // the steps fill in as they complete: keep them in sight
    this.testButtons.forEach((b) => { b.disabled = true; });
    busy(button, true, mode === "send" ? "Sending…" : "Testing…");
    const body = { mode };
    if (to) body.to = to;
    if (this.isDirty() || this.o.isNew) body.config = this.body();
    try {
      let result = null;
      await postStream(path, body, (e) => {
        if (e.event === "step") this.renderStep(list, e.step);
        else if (e.event === "result") result = e.result;
        else if (e.event === "error") throw new Error(e.detail || "the test stopped unexpectedly");
      });
      if (result) this.renderTest(result, list);
    } catch (err) {
      clear(this.testOut, banner("bad", err.status === 422 && body.config ? "The settings are not valid yet; see the marked fields. " : "", errorText(err)));
      if (err.status === 422) showErrors(this.el, (err.errors || []).map((e) => ({ ...e, field: e.field.replace(/^config\./, "") })));
    }
    this.testButtons.forEach((b) => busy(b, false));
  }

  // One step finished: show it, and move the spinner to the next one.
  renderStep(list, s) {
    const items = [...list.children];
    const i = items.findIndex((li) => li.dataset.step === s.step);
    if (i < 0) return;
    const li = items[i];
    const [, result, detail, ms] = li.children;
    li.classList.remove("pending");
    li.classList.add(s.ok ? "ok" : "failed");
    clear(result, badge(s.ok ? "ok" : "bad", s.ok ? "ok" : "failed"));
    detail.textContent = s.detail || "";
    ms.textContent = s.ms != null ? `${s.ms} ms` : "";
    const next = items[i + 1];
    if (s.ok && next && next.classList.contains("pending")) clear(next.children[1], h("span", { class: "spinner", "aria-label": "running" }));
  }

  renderTest(r, list) {
    const byName = Object.fromEntries((r.steps || []).map((s) => [s.step, s]));
    for (const li of list.children) {
      const s = byName[li.dataset.step];
      li.classList.remove("pending");
      const [, result, detail, ms] = li.children;
      if (s) {
        clear(result, badge(s.ok ? "ok" : "bad", s.ok ? "ok" : "failed"));
        detail.textContent = s.detail || "";
        ms.textContent = s.ms != null ? `${s.ms} ms` : "";
        li.classList.add(s.ok ? "ok" : "failed");
      } else {
        clear(result, h("span", { class: "muted" }, "skipped"));
      }
    }
    const transcript = (r.transcript || []).map((l) => (typeof l === "string" ? l : `${l.direction || l.dir || ""} ${l.line || l.text || JSON.stringify(l)}`)).join("\n");
    this.testOut.append(h("div", {},
      r.ok ? banner("ok", h("strong", {}, "Test passed. "), r.mode === "dry_run" || !byName.data ? "The server accepted the connection, login and recipients." : "The test e-mail was accepted by the server.")
        : banner("bad", h("strong", {}, "Test failed. "), r.hint || "See the failed step above."),
      transcript ? h("details", { class: "transcript" }, h("summary", {}, "SMTP transcript (credentials redacted)"), h("pre", {}, transcript)) : null));
  }

  // ---- state ----------------------------------------------------------------------------

  changed(path) {
    if (path === "authentication.method") {
      for (const i of this.el.querySelectorAll("input[name='authentication.username']")) i.value = this.v.authentication.username ?? "";
    }
    clearErrors(this.el.querySelector(`[data-field-path="${CSS.escape(path)}"]`) || h("div"));
    this.sync();
    this.o.onChange?.(this);
  }

  portHelp() {
    const def = DEFAULT_PORTS[this.v.protocol];
    this.portHelpEl.textContent = this.portEdited ? `Default for ${this.v.protocol.toUpperCase()}: ${def}.` : `The ${this.v.protocol.toUpperCase()} default; follows the protocol until you change it.`;
  }

  sync() {
    const auth = this.v.authentication;
    this.pwBlock.hidden = auth.method !== "password";
    this.oauthBlock.hidden = auth.method !== "oauth2";
    this.msTenantField.hidden = auth.provider !== "microsoft";
    this.customFields.hidden = auth.provider !== "custom";
    this.starttlsField.querySelector("select").disabled = !this.o.canEdit || this.v.protocol === "smtps";
    this.portHelp();
    if (auth.method === "oauth2") this.renderOauthStatus();
  }

  body() {
    const v = this.v;
    const a = v.authentication;
    const pick = (...keys) => Object.fromEntries(keys.map((k) => [k, a[k] ?? null]));
    let auth = { method: a.method };
    if (a.method === "password") auth = { method: "password", ...pick("username") };
    if (a.method === "oauth2") {
      auth = { method: "oauth2", ...pick("provider", "grant", "username", "client_id", "redirect_uri", "scope", "authorize_url", "token_url") };
      if (a.provider === "microsoft") auth.directory_tenant_id = a.directory_tenant_id ?? null;
      if (!auth.provider) auth.provider = null;
      if (!auth.grant) auth.grant = null;
    }
    for (const [path, value] of Object.entries(this.secrets)) {
      const key = path.split(".").at(-1);
      if (path.startsWith("authentication.") && value !== "") auth[key] = value;
    }
    const tls = { verify: !!v.tls.verify, ca_certificates_pem: v.tls.ca_certificates_pem || null, client_certificate_pem: v.tls.client_certificate_pem || null };
    if (this.secrets["tls.client_key_pem"]) tls.client_key_pem = this.secrets["tls.client_key_pem"];
    const out = {
      protocol: v.protocol, host: v.host || "", port: v.port ?? null, starttls: v.starttls, tls, helo_name: v.helo_name || null,
      timeouts: v.timeouts, limits: v.limits, authentication: auth, message_defaults: v.message_defaults,
    };
    if (!this.o.isSystem) {
      out.name = v.name || "";
      if (v.is_default) out.is_default = true;
      out.remote_output = { enabled: !!v.remote_output?.enabled, remote_client: v.remote_output?.remote_client || null };
    }
    return out;
  }

  snapshot() { return JSON.stringify([this.body(), this.secrets]); }
  isDirty() { return this.snapshot() !== this.initial; }
  get name() { return this.v.name || ""; }

  showErrors(errors) {
    const orphans = showErrors(this.el, errors);
    clear(this.topBanner, orphans.length ? banner("bad", "Please fix: ", orphans.map((e) => `${e.field ? e.field + ": " : ""}${e.message}`).join("; ")) : null);
  }
  message(kind, ...text) { clear(this.topBanner, banner(kind, ...text)); }
  clearMessage() { clear(this.topBanner); clearErrors(this.el); }
}

export async function remoteContext(ctx) {
  // Remote output needs the system setting and at least one remote client of this tenant.
  let clients = [];
  let allowed = null;
  try { clients = (await get(`/api/v1/tenants/${encodeURIComponent(ctx.tenant)}/remote-clients`)).items.map((c) => c.name); } catch { clients = []; }
  if (ctx.systemAdmin) {
    try { allowed = !!(await get("/api/v1/system/settings")).allow_remote_clients; } catch { allowed = null; }
  }
  return { clients, allowed: allowed === null ? clients.length > 0 : allowed };
}

// The OAuth2 callback sends the browser back to the server's page with
// ?oauth2=ok|error&message=...: a banner, shown once (the URL is cleaned at once).
export function oauthFlash() {
  const params = new URLSearchParams(location.search);
  const oauth = params.get("oauth2");
  if (!oauth) return null;
  const msg = params.get("message") || "";
  params.delete("oauth2");
  params.delete("message");
  const rest = params.toString();
  history.replaceState(null, "", rest ? `${location.pathname}?${rest}` : location.pathname);
  const text = msg ? msg.charAt(0).toUpperCase() + msg.slice(1) : "";
  return oauth === "ok"
    ? banner("ok", text || "Authorized: mailgate stored the tokens; the server can send now.")
    : banner("bad", h("strong", {}, "Authorization failed. "), text);
}
