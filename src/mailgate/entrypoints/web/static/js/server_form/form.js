// The e-mail server form, shared by the tenant page (with its ribbon) and the system server
// page (no ribbon): its sections, the authentication method, and the state a page saves
// (body(), isDirty(), errors shown at their fields). Inputs are bound by ./binding.js; the
// OAuth2 and test sections are panels of their own.
import { get, post } from "../api.js";

export const LIMIT_FIELDS = ["max_connections", "messages_per_minute", "recipients_per_day"];
const presetLists = new Map(); // URL -> Promise of the API's presets, fetched once per page load
import { h, clear, field, showErrors, clearErrors, banner, nextId, busy, toast, errorText } from "../ui.js";
import { BoundForm } from "./binding.js";
import { OAuth2Panel } from "./oauth2_panel.js";
import { TestPanel } from "./test_panel.js";
import { TRANSPORTS, API_PROVIDER, SMTP_PRESETS } from "./guide.js";

export const DEFAULT_PORTS = { smtp: 587, smtps: 465 };

export function emptyServer(name = "") {
  return {
    name, is_default: false, transport: "smtp", protocol: "smtp", host: "", port: 587, starttls: "required",
    tls: { verify: true, ca_certificates_pem: null, client_certificate_pem: null, client_key_set: false },
    helo_name: null, timeouts: { connect_s: 15, command_s: 60 },
    limits: { max_connections: 3, messages_per_minute: null, max_message_bytes: null, recipients_per_day: null },
    authentication: { method: "none" },
    message_defaults: { from_address: null, from_name: null, reply_to: null, envelope_from: null, cc: [], bcc: [], subject: null, body_text: null, body_html: null, headers: {} },
    remote_output: { enabled: false, remote_client: null },
  };
}

export class ServerForm extends BoundForm {
  /**
   * opts: value (API view or emptyServer()), isNew, isSystem, canEdit, canTest, apiBase (the
   * resource URL once saved), collectionBase (tenant servers: the list URL, to test a new
   * config), remoteClients (names), remoteAllowed, testTo, redirectUri (mailgate's default
   * OAuth2 redirect URI), onChange, onReload.
   */
  constructor(opts) {
    super(opts);
    this.v.transport ??= "smtp";
    this.portEdited = !opts.isNew && this.v.port !== DEFAULT_PORTS[this.v.protocol];
    this.el = h("form", { class: "server-form", novalidate: true, "aria-label": "E-mail server settings" });
    this.el.addEventListener("submit", (e) => e.preventDefault());
    // Enter in a one-line field saves, as in any form (the test address runs no save).
    this.el.addEventListener("keydown", (e) => {
      const t = e.target;
      if (e.key !== "Enter" || e.isComposing || !(t instanceof HTMLInputElement)) return;
      if (["checkbox", "radio", "file", "button"].includes(t.type) || t.closest(".test-row")) return;
      e.preventDefault();
      this.o.onSubmit?.();
    });
    this.topBanner = h("div", { class: "form-banner" });
    this.build();
    this.initial = this.snapshot();
    this.sync();
  }

  get viaApi() { return this.v.transport in API_PROVIDER; }

  // ---- layout ---------------------------------------------------------------------------

  build() {
    const o = this.o;
    const parts = [this.topBanner];
    if (o.value.secrets_error) this.message("bad", h("strong", {}, "Stored secrets unreadable. "), o.value.secrets_error);
    parts.push(this.statusBanners());
    parts.push(this.buildTransport());
    if (!o.isSystem) {
      const isDefault = o.value.is_default && !o.isNew;
      const def = this.check("Default server of this tenant", "is_default", isDefault ? "To change it, make another server the default." : "Used when a message names no server.");
      if (isDefault) def.querySelector("input").disabled = true;
      this.renameWarning = h("div", { class: "wide", hidden: true });
      parts.push(this.section("Name", "Workflows choose a configuration by this name.",
        h("div", { class: "grid" },
          this.text("Name", "name", { placeholder: "e.g. DEFAULT or invoices", help: "Up to 64 letters, digits, spaces, dots, - and _, starting with a letter or digit." }), def,
          this.renameWarning)));
    }
    this.starttlsField = this.select("STARTTLS", "starttls", { required: "Required", opportunistic: "Opportunistic", disabled: "Disabled (plain text)" }, { help: "Required refuses a server without TLS; opportunistic uses TLS when offered. Not used by SMTPS, which is encrypted from the start." });
    this.portInput = h("input", { type: "number", min: "1", max: "65535", inputmode: "numeric" });
    this.bind("port", this.portInput, "int");
    this.portInput.addEventListener("input", () => { this.portEdited = this.portInput.value.trim() !== ""; this.portHelp(); });
    this.portField = field("Port", this.portInput, { path: "port" });
    this.portHelpEl = this.portField.querySelector(".help") || h("span", { class: "help" });
    this.portField.insertBefore(this.portHelpEl, this.portField.querySelector(".field-error"));
    const proto = this.select("Protocol", "protocol", { smtp: "SMTP", smtps: "SMTPS (implicit TLS)" }, { help: "SMTP upgrades with STARTTLS as set below; SMTPS is TLS from the first byte." });
    proto.querySelector("select").addEventListener("change", () => {
      if (!this.portEdited) this.setValue("port", DEFAULT_PORTS[this.v.protocol]);
    });
    this.smtpSection = this.section("Protocol and host", null,
      h("div", { class: "grid" },
        proto,
        this.text("Host", "host", { placeholder: "smtp.office365.com" }),
        this.portField,
        this.starttlsField),
      h("details", { class: "advanced" }, h("summary", {}, "Connection details"),
        h("div", { class: "grid" },
          this.text("HELO/EHLO name", "helo_name", { help: "Default: this machine's name." }))));
    parts.push(this.smtpSection);

    this.clientKey = this.secret("Client key (PEM)", "tls.client_key_pem", "tls.client_key_set", "The client certificate's unencrypted private key (PEM). Checked with the certificate when you save.", { multiline: true });
    this.clientKey.classList.add("wide");
    this.certSection = this.section("Certificates", "Trust a company CA or a self-signed server certificate, and optionally present a client certificate.",
      h("div", { class: "grid" },
        this.check("Verify the server certificate and host name", "tls.verify", "Turn off only for a test server."),
        this.pem("Trusted CA or server certificates (PEM)", "tls.ca_certificates_pem", "Paste one or more certificates, or upload a .pem file."),
        this.pem("Client certificate (PEM)", "tls.client_certificate_pem", "For servers that require mutual TLS."),
        this.clientKey));
    parts.push(this.certSection);

    parts.push(this.buildAuth());

    parts.push(this.section("Limits and timeouts", "Limits hold across every process of this installation; mail over a limit waits.",
      h("div", { class: "grid" },
        this.buildLimitPresets(),
        this.text("Max. connections", "limits.max_connections", { kind: "int", type: "number", help: "Office 365 allows 3 per mailbox; Graph 4 requests." }),
        this.text("Messages per minute", "limits.messages_per_minute", { kind: "int", type: "number", help: "Empty: no limit. Office 365: 30." }),
        this.text("Recipients per day", "limits.recipients_per_day", { kind: "int", type: "number", help: "Recipients in any 24 hours (To, Cc and Bcc count). Empty: no limit. Exchange Online: 10,000 per mailbox." }),
        this.text("Max. message size (bytes)", "limits.max_message_bytes", { kind: "int", type: "number", help: "Empty: the installation's limit." }),
        this.text("Connect timeout (s)", "timeouts.connect_s", { kind: "int", type: "number" }),
        this.text("Command timeout (s)", "timeouts.command_s", { kind: "int", type: "number" }))));

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

    if (!o.isSystem) {
      this.remoteSection = this.buildRemote();
      parts.push(this.remoteSection);
    }
    this.test = new TestPanel(this);
    parts.push(this.test.el);
    this.el.append(...parts);
  }

  // What needs attention, above everything: a provider's pause, an offline remote client.
  statusBanners() {
    const o = this.o;
    const v = o.value;
    const box = h("div", { class: "status-banners" });
    if (v.delivery?.state === "paused") {
      const until = v.delivery.paused_until ? new Date(v.delivery.paused_until).toLocaleString() : "further notice";
      const resume = o.canEdit && o.apiBase && !o.isSystem ? h("button", { type: "button", class: "small" }, "Resume now") : null;
      resume?.addEventListener("click", async () => {
        busy(resume, true, "Resuming…");
        try { await post(`${o.apiBase}/resume`); toast("Delivery resumed"); o.onReload?.(); } catch (err) { toast(errorText(err), "bad"); busy(resume, false); }
      });
      box.append(banner("warn", h("strong", {}, "Paused by the provider. "),
        `Mail waits until ${until}${v.delivery.reason ? ` (${v.delivery.reason})` : ""}. `,
        v.delivery.last_reply ? h("span", { class: "mono" }, v.delivery.last_reply) : null, resume ? " " : null, resume));
    }
    const rc = v.remote_output?.enabled ? v.remote_output.remote_client : null;
    if (rc && o.remoteConnected && o.remoteConnected[rc] === false) {
      box.append(banner("bad", h("strong", {}, "Remote client offline. "), `"${rc}" is not connected: this configuration's mail waits until its agent connects again.`));
    }
    return box;
  }

  // The first choice: how mail leaves. The API transports hide what only SMTP uses.
  buildTransport() {
    const group = h("div", { class: "choices", role: "radiogroup", "aria-label": "Transport" });
    this.transportRadios = {};
    for (const [value, t] of Object.entries(TRANSPORTS)) {
      const id = nextId("tr");
      const r = h("input", { type: "radio", name: `transport-${this.o.isSystem ? "sys" : "srv"}`, value, id, checked: this.v.transport === value, disabled: !this.o.canEdit, "aria-labelledby": `${id}-label`, "aria-describedby": `${id}-note` });
      r.addEventListener("change", () => { if (r.checked) this.chooseTransport(value); });
      this.transportRadios[value] = r;
      group.append(h("label", { class: "choice", for: id }, r, h("span", {}, h("strong", { id: `${id}-label` }, t.label), h("span", { class: "help", id: `${id}-note` }, t.note))));
    }
    this.transportHint = h("p", { class: "section-note transport-hint" });
    return this.section("Transport", "How mail leaves mailgate for this configuration.",
      h("fieldset", { dataset: { fieldPath: "transport" } }, h("legend", { class: "sr-only" }, "Transport"), group,
        h("p", { class: "field-error", dataset: { errorFor: "transport" } })),
      this.transportHint);
  }

  chooseTransport(value) {
    this.v.transport = value;
    const provider = API_PROVIDER[value];
    if (provider) {
      // The API transports take OAuth2 of their own provider only (README "Delivery transports").
      this.setMethod("oauth2");
      this.oauth2.setProvider(provider);
      if (this.v.remote_output) this.setValue("remote_output.enabled", false);
    }
    this.changed("transport");
  }

  setMethod(method) {
    this.v.authentication.method = method;
    for (const r of this.el.querySelectorAll(".auth-method input[type=radio]")) r.checked = r.value === method;
  }

  // A provider's SMTP service, filled in when the OAuth2 provider is chosen, unless the
  // person typed another host.
  presetFor(provider) {
    const preset = SMTP_PRESETS[provider];
    if (!preset || this.viaApi) return;
    const known = Object.values(SMTP_PRESETS).map((p) => p.host);
    if (this.v.host && !known.includes(this.v.host)) return;
    for (const [k, v] of Object.entries(preset)) this.setValue(k, v);
    this.portEdited = false;
  }

  // "Provider limits": one click fills the three limits with a provider's documented
  // numbers (served by the API from LIMIT_PRESETS), as edits the form saves.
  buildLimitPresets() {
    const id = nextId("presets");
    this.presetButtons = [];
    this.presetBox = h("div", { class: "preset-choices", role: "group", "aria-labelledby": id });
    const wrap = h("div", { class: "field wide limit-presets", hidden: true },
      h("span", { class: "label", id }, "Provider limits"), this.presetBox,
      h("span", { class: "help" }, "Fills max. connections, messages per minute and recipients per day below; change them before saving if your plan differs."));
    const url = this.o.presetsUrl;
    // Edit controls only for those who may edit (a read-only user sees the limits' values).
    if (!url || !this.o.canEdit) return wrap;
    if (!presetLists.has(url)) presetLists.set(url, get(url).then((r) => r.items));
    presetLists.get(url).then((items) => {
      for (const p of items) {
        const l = p.limits;
        const n = (x) => (x == null ? "no limit" : x.toLocaleString("en-US"));
        const b = h("button", { type: "button", class: "preset", "aria-pressed": "false", disabled: !this.o.canEdit, dataset: { preset: p.name } },
          h("strong", {}, p.label),
          h("span", { class: "help" }, `${n(l.messages_per_minute)} messages/min · ${n(l.max_connections)} connections · ${n(l.recipients_per_day)} recipients/day`));
        b.addEventListener("click", () => this.applyLimits(l));
        this.presetButtons.push({ button: b, limits: l });
        this.presetBox.append(b);
      }
      wrap.hidden = items.length === 0;
      this.markPreset();
    }).catch(() => { presetLists.delete(url); });
    return wrap;
  }

  applyLimits(limits) {
    for (const k of LIMIT_FIELDS) if (k in limits) this.setValue(`limits.${k}`, limits[k]);
    for (const k of LIMIT_FIELDS) this.changed(`limits.${k}`);
  }

  // The preset the three fields match now, shown pressed.
  markPreset() {
    for (const { button, limits } of this.presetButtons || []) {
      const same = LIMIT_FIELDS.every((k) => (this.v.limits?.[k] ?? null) === (limits[k] ?? null));
      button.setAttribute("aria-pressed", String(same));
    }
  }

  buildAuth() {
    const method = h("div", { class: "radios auth-method", role: "radiogroup", "aria-label": "Authentication method" });
    for (const [v, l] of Object.entries({ none: "None", password: "User and password", oauth2: "OAuth2" })) {
      const r = h("input", { type: "radio", name: `auth-method-${this.o.isSystem ? "sys" : "srv"}`, value: v, id: nextId("m"), checked: this.v.authentication.method === v, disabled: !this.o.canEdit });
      r.addEventListener("change", () => { if (r.checked) { this.v.authentication.method = v; this.changed("authentication.method"); } });
      method.append(h("label", { class: "check", for: r.id }, r, l));
    }
    this.methodBox = h("fieldset", {}, h("legend", {}, "Method"), method);
    this.apiAuthNote = h("p", { class: "section-note" });
    this.plainWarning = h("div", { class: "plain-warning", hidden: true });
    this.pwBlock = h("div", { class: "grid" },
      this.text("User name", "authentication.username", { placeholder: "sender@example.com" }),
      this.secret("Password", "authentication.password", "authentication.password_set"));
    this.oauth2 = new OAuth2Panel(this);
    return this.section("Authentication", null,
      this.apiAuthNote,
      this.methodBox,
      this.plainWarning,
      h("p", { class: "field-error", dataset: { errorFor: "authentication.method" } }),
      h("div", { class: "auth-detail" }, this.pwBlock, this.oauth2.el));
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
    const api = this.viaApi;
    this.smtpSection.hidden = api;
    this.certSection.hidden = api;
    if (this.remoteSection) this.remoteSection.hidden = api;
    this.methodBox.hidden = api;
    this.apiAuthNote.hidden = !api;
    this.apiAuthNote.textContent = api ? `${TRANSPORTS[this.v.transport].label} signs in with OAuth2 at ${API_PROVIDER[this.v.transport] === "microsoft" ? "Microsoft" : "Google"}; set it up with the steps below.` : "";
    this.transportHint.textContent = api
      ? "Host, port, TLS and HELO are not used: mail goes to the provider's API over HTTPS. Remote clients cannot deliver it (they speak SMTP only)."
      : this.v.host === SMTP_PRESETS.microsoft.host && auth.method === "password"
        ? "Exchange Online ends Basic SMTP AUTH (user and password) at the end of December 2026: choose OAuth2, or the Microsoft Graph transport."
        : "";
    this.transportHint.hidden = !this.transportHint.textContent;
    this.pwBlock.hidden = auth.method !== "password";
    // Credentials that could cross the network unencrypted deserve a word before saving.
    const plain = !api && this.v.protocol === "smtp" && this.v.starttls !== "required" && auth.method !== "none";
    this.plainWarning.hidden = !plain;
    if (plain) clear(this.plainWarning, banner("warn", h("strong", {}, this.v.starttls === "disabled" ? "No TLS. " : "TLS only if offered. "),
      `With STARTTLS ${this.v.starttls}, the ${auth.method === "oauth2" ? "access token" : "password"} ${this.v.starttls === "disabled" ? "travels" : "can travel"} over the network in plain text. Choose STARTTLS Required or SMTPS unless the server is on this machine.`));
    if (this.renameWarning) {
      const old = this.o.value.name;
      const renamed = !this.o.isNew && (this.v.name || "").trim() !== old;
      this.renameWarning.hidden = !renamed;
      if (renamed) clear(this.renameWarning, banner("warn", h("strong", {}, "Renaming. "), `Workflows, SMTP clients and API calls that send with server "${old}" will no longer find it: change them to the new name too.`));
    }
    this.starttlsField.querySelector("select").disabled = !this.o.canEdit || this.v.protocol === "smtps";
    this.portHelp();
    this.markPreset();
    this.oauth2.sync();
  }

  body() {
    const v = this.v;
    const a = v.authentication;
    let auth = { method: a.method };
    if (a.method === "password") auth = { method: "password", username: a.username ?? null };
    if (a.method === "oauth2") auth = this.oauth2.body();
    for (const [path, value] of Object.entries(this.secrets)) {
      const key = path.split(".").at(-1);
      if (path.startsWith("authentication.") && value !== "") auth[key] = value;
    }
    const tls = { verify: !!v.tls.verify, ca_certificates_pem: v.tls.ca_certificates_pem || null, client_certificate_pem: v.tls.client_certificate_pem || null };
    if (this.secrets["tls.client_key_pem"]) tls.client_key_pem = this.secrets["tls.client_key_pem"];
    const out = {
      transport: v.transport || "smtp", protocol: v.protocol, host: v.host || "", port: v.port ?? null, starttls: v.starttls, tls, helo_name: v.helo_name || null,
      timeouts: v.timeouts, limits: v.limits, authentication: auth, message_defaults: v.message_defaults,
    };
    if (!this.o.isSystem) {
      out.name = v.name || "";
      if (v.is_default) out.is_default = true;
      out.remote_output = { enabled: !this.viaApi && !!v.remote_output?.enabled, remote_client: v.remote_output?.remote_client || null };
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
  const connected = {};
  try {
    const items = (await get(`/api/v1/tenants/${encodeURIComponent(ctx.tenant)}/remote-clients`)).items;
    clients = items.map((c) => c.name);
    for (const c of items) connected[c.name] = !!c.connected;
  } catch { clients = []; }
  if (ctx.systemAdmin) {
    try { allowed = !!(await get("/api/v1/system/settings")).allow_remote_clients; } catch { allowed = null; }
  }
  return { clients, connected, allowed: allowed === null ? clients.length > 0 : allowed };
}
