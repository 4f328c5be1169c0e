// The OAuth2 part of the server form: the provider's fields, the authorization status and
// its actions (authorize, get a token, forget), and the banner after the provider's callback.
import { post, del } from "../api.js";
import { h, clear, banner, badge, fmtTime, toast, busy, errorText } from "../ui.js";
import { API_PROVIDER, TRANSPORTS, copyable, setupSteps, renderSteps } from "./guide.js";

const OAUTH_PROVIDERS = { microsoft: "Microsoft 365 / Office 365", google: "Google Workspace / Gmail", custom: "Other (custom endpoints)" };
const GRANTS = { authorization_code: "Authorization code", client_credentials: "Client credentials" };
const A = "authentication.";

export class OAuth2Panel {
  /** form: the ServerForm whose `authentication` (method "oauth2") this panel edits. */
  constructor(form) {
    this.form = form;
    this.providerField = form.select("Provider", A + "provider", { "": "Choose…", ...OAUTH_PROVIDERS });
    this.providerField.querySelector("select").addEventListener("change", () => this.providerChosen());
    this.grantField = form.select("Grant", A + "grant", { "": "Choose…", ...GRANTS }, { help: "Authorization code: someone signs in once as the mailbox. Client credentials: the app's own permission, no sign-in." });
    this.msTenantField = form.text("Directory (tenant) ID", A + "directory_tenant_id", { help: "Entra ID tenant ID (a GUID) or domain, from the app's Overview." });
    this.customFields = h("div", { class: "grid wide" },
      form.text("Authorize URL", A + "authorize_url", { placeholder: "https://…/authorize" }),
      form.text("Token URL", A + "token_url", { placeholder: "https://…/token" }),
      form.text("Scope", A + "scope", { help: "The scope your mail server needs." }));
    this.redirectValue = h("div", { class: "redirect-value" });
    this.redirectBox = h("div", { class: "redirect-box wide" },
      h("span", { class: "label" }, "Redirect URI to register at the provider"), this.redirectValue,
      h("span", { class: "help" }, "Register exactly this address (scheme, host, port and path) as a Web redirect URI."));
    this.redirectOverride = h("details", { class: "advanced wide" }, h("summary", {}, "Use another redirect URI"),
      h("div", { class: "grid" }, form.text("Redirect URI", A + "redirect_uri", { help: "Empty: mailgate's own address above. It must lead to /settings/oauth2code of this mailgate.", wide: true })));
    this.guide = h("div", { class: "guide-box" });
    this.mailboxField = form.text("Mailbox", A + "username", { placeholder: "sender@contoso.com", help: "The mailbox that sends." });
    this.el = h("div", { class: "oauth2-panel" },
      this.guide,
      this.redirectBox,
      h("div", { class: "grid" },
        this.providerField,
        this.grantField,
        this.mailboxField,
        this.msTenantField,
        form.text("Client (application) ID", A + "client_id"),
        form.secret("Client secret", A + "client_secret", A + "client_secret_set"),
        this.customFields,
        this.redirectOverride),
      this.status = h("div", { class: "oauth-status" }));
    this.guideKey = null;
  }

  get redirectUri() {
    return this.form.v.authentication.redirect_uri || this.form.o.redirectUri || document.getElementById("main")?.dataset.redirectUri || `${location.origin}/settings/oauth2code`;
  }

  // The transport fixes the provider (Graph: microsoft, Gmail API: google).
  setProvider(provider) {
    this.form.setValue(A + "provider", provider);
    if (provider === "google") this.form.setValue(A + "grant", "authorization_code");
  }

  providerChosen() {
    const a = this.form.v.authentication;
    if (a.provider === "google") this.form.setValue(A + "grant", "authorization_code");
    this.form.presetFor(a.provider);
    this.form.changed(A + "provider");
  }

  // After every edit: show the fields of the chosen method, provider and grant.
  sync() {
    const form = this.form;
    const auth = form.v.authentication;
    this.el.hidden = auth.method !== "oauth2";
    const fixedProvider = API_PROVIDER[form.v.transport];
    this.providerField.hidden = !!fixedProvider;
    this.grantField.hidden = auth.provider === "google";
    this.msTenantField.hidden = auth.provider !== "microsoft";
    this.customFields.hidden = auth.provider !== "custom";
    const code = auth.grant !== "client_credentials";
    this.redirectBox.hidden = !code || !auth.provider;
    this.redirectOverride.hidden = !code || !auth.provider;
    this.mailboxField.querySelector(".help").textContent = form.viaApi ? "The mailbox that sends (and, for delegated access, the account that signs in)." : "The mailbox XOAUTH2 signs in as.";
    if (auth.method !== "oauth2") return;
    clear(this.redirectValue, copyable(this.redirectUri, "Copy redirect URI"));
    this.renderGuide();
    this.renderStatus();
  }

  renderGuide() {
    const form = this.form;
    const a = form.v.authentication;
    const v = { transport: form.v.transport, provider: a.provider, grant: a.grant || "authorization_code", mailbox: a.username, clientId: a.client_id, redirectUri: this.redirectUri };
    const key = JSON.stringify(v);
    if (key === this.guideKey) return;
    this.guideKey = key;
    const steps = form.o.canEdit ? setupSteps(v) : null;
    if (!steps) { clear(this.guide); return; }
    const where = a.provider === "microsoft" ? "Microsoft" : a.provider === "google" ? "Google" : "your provider";
    const what = `${TRANSPORTS[form.v.transport].label}, ${a.grant === "client_credentials" ? "app-only" : "delegated"}`;
    const open = this.guide.querySelector("details")?.open ?? !(form.o.value.oauth2_status?.state === "authorized");
    const d = h("details", { class: "setup", open }, h("summary", {}, `Set up at ${where} (${what})`), renderSteps(steps));
    clear(this.guide, d);
  }

  // The `authentication` object to send (secrets are added by the form).
  body() {
    const a = this.form.v.authentication;
    const pick = (...keys) => Object.fromEntries(keys.map((k) => [k, a[k] ?? null]));
    const auth = { method: "oauth2", ...pick("provider", "grant", "username", "client_id", "redirect_uri", "scope", "authorize_url", "token_url") };
    if (a.provider === "microsoft") auth.directory_tenant_id = a.directory_tenant_id ?? null;
    // Endpoint and scope overrides are only edited for a custom provider; for the others,
    // keep those saved with the same provider (set through the API) and drop a custom one's.
    if (a.provider !== "custom" && this.form.o.value.authentication?.provider !== a.provider) {
      auth.authorize_url = null;
      auth.token_url = null;
      auth.scope = null;
    }
    if (a.grant === "client_credentials") auth.redirect_uri = null;
    if (!auth.provider) auth.provider = null;
    if (!auth.grant) auth.grant = null;
    return auth;
  }

  // What is still missing before the provider can be asked: [label, dotted path].
  missing() {
    const form = this.form;
    const a = form.v.authentication;
    const out = [];
    const secretTyped = (form.secrets[A + "client_secret"] || "") !== "";
    const secretSet = !!a.client_secret_set; // "Change" with nothing typed keeps the stored one
    if (!a.provider) out.push(["Provider", A + "provider"]);
    if (!a.grant) out.push(["Grant", A + "grant"]);
    if (!a.username) out.push(["Mailbox", A + "username"]);
    if (a.provider === "microsoft" && !a.directory_tenant_id) out.push(["Directory (tenant) ID", A + "directory_tenant_id"]);
    if (!a.client_id) out.push(["Client (application) ID", A + "client_id"]);
    if (!secretSet && !secretTyped) out.push(["Client secret", A + "client_secret"]);
    if (a.provider === "custom") {
      if (a.grant !== "client_credentials" && !a.authorize_url) out.push(["Authorize URL", A + "authorize_url"]);
      if (!a.token_url) out.push(["Token URL", A + "token_url"]);
      if (!a.scope) out.push(["Scope", A + "scope"]);
    }
    return out;
  }

  renderStatus() {
    const o = this.form.o;
    const st = o.value.oauth2_status;
    const auth = this.form.v.authentication;
    const box = this.status;
    const code = auth.grant !== "client_credentials";
    const missing = this.missing();
    const saved = !o.isNew && o.value.authentication?.method === "oauth2";
    const dirty = this.form.isDirty();
    const go = (path) => {
      const input = this.form.el.querySelector(`[data-field-path="${CSS.escape(path)}"] input, [data-field-path="${CSS.escape(path)}"] select, [data-field-path="${CSS.escape(path)}"] button`);
      input?.focus();
    };
    const checklist = h("div", { class: "preflight" },
      h("h3", {}, "Before you can ", code ? "authorize" : "get a token"),
      h("ul", { class: "checks" },
        missing.map(([label, path]) => h("li", { class: "todo" }, h("button", { type: "button", class: "link", onclick: () => go(path) }, label), " is missing")),
        !missing.length && (!saved || dirty) ? h("li", { class: "todo" }, "Save the configuration (Save below)") : null));
    if (!o.canEdit && !saved) { clear(box); return; }
    if (!saved || missing.length || dirty) {
      clear(box, saved ? this.statusList(st) : null, o.canEdit ? checklist : null);
      return;
    }
    const needs = st?.state === "needs_reauthorization" || st?.state === "error";
    const authorize = h("button", { type: "button", class: needs || st?.state === "not_authorized" ? "primary" : "", disabled: !o.canEdit }, code ? (st?.state === "authorized" ? "Authorize again" : "Authorize") : "Get a token now");
    authorize.addEventListener("click", () => this.authorize(code, authorize));
    const forget = h("button", { type: "button", class: "danger small", disabled: !o.canEdit }, "Forget tokens");
    forget.addEventListener("click", async () => {
      try { await del(`${o.apiBase}/oauth2`); toast("Tokens forgotten"); o.onReload?.(); } catch (err) { toast(errorText(err), "bad"); }
    });
    clear(box, this.statusList(st),
      o.canEdit ? h("div", { class: "actions" }, authorize, st?.state && st.state !== "not_authorized" ? forget : null,
        code ? h("span", { class: "muted" }, `Sign in as ${o.value.authentication.username || "the mailbox"} at the provider.`) : null) : null);
  }

  statusList(st) {
    const o = this.form.o;
    const needs = st?.state === "needs_reauthorization" || st?.state === "error";
    return [h("h3", {}, "Authorization"),
      needs ? banner("bad", h("strong", {}, "Re-authorization needed. "), st.last_error || "The provider no longer accepts the stored token. Mail to this server waits until someone authorizes again.") : null,
      st?.warning ? banner("warn", st.warning) : null,
      h("dl", { class: "kv" },
        h("dt", {}, "Status"), h("dd", {}, badge(st?.state || "not_authorized")),
        h("dt", {}, "Mailbox"), h("dd", {}, o.value.authentication.username || "—"),
        h("dt", {}, "Access token valid until"), h("dd", {}, fmtTime(st?.access_token_expires_at)),
        h("dt", {}, "Last refreshed"), h("dd", {}, fmtTime(st?.refresh_token_last_used_at)),
        st?.last_error && !needs ? [h("dt", {}, "Last error"), h("dd", {}, st.last_error)] : null)];
  }

  // Authorization code: off to the provider's consent page (its callback returns to this
  // page, see oauthFlash). Client credentials: mailgate fetches a token itself.
  async authorize(code, button) {
    const o = this.form.o;
    if (this.form.isDirty()) { toast("Save your changes first, then authorize.", "bad"); return; }
    busy(button, true, code ? "Opening the provider…" : "Getting a token…");
    try {
      if (code) {
        const r = await post(`${o.apiBase}/oauth2/authorize`);
        location.assign(r.authorization_url);
        return;
      }
      await post(`${o.apiBase}/oauth2/refresh`);
      toast("Token received");
      o.onReload?.();
    } catch (err) {
      toast(errorText(err), "bad", 8000);
    }
    busy(button, false);
  }
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
