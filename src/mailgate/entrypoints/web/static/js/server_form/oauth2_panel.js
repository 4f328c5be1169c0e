// The OAuth2 part of the server form: the provider's fields, the authorization status and
// its actions (authorize, get a token, forget), and the banner after the provider's callback.
import { post, del } from "../api.js";
import { h, clear, banner, badge, fmtTime, toast, busy, errorText } from "../ui.js";

const OAUTH_PROVIDERS = { microsoft: "Microsoft 365 / Office 365", google: "Google Workspace / Gmail", custom: "Other (custom endpoints)" };
const A = "authentication.";

export class OAuth2Panel {
  /** form: the ServerForm whose `authentication` (method "oauth2") this panel edits. */
  constructor(form) {
    this.form = form;
    this.msTenantField = form.text("Directory (tenant) ID", A + "directory_tenant_id", { help: "Microsoft Entra tenant ID or domain." });
    this.customFields = h("div", { class: "grid wide" },
      form.text("Authorize URL", A + "authorize_url", { placeholder: "https://…/authorize" }),
      form.text("Token URL", A + "token_url", { placeholder: "https://…/token" }),
      form.text("Scope", A + "scope", { help: "Empty: the provider's default." }));
    this.el = h("div", {},
      h("div", { class: "grid" },
        form.select("Provider", A + "provider", { "": "Choose…", ...OAUTH_PROVIDERS }),
        form.select("Grant", A + "grant", { "": "Choose…", authorization_code: "Authorization code (a person signs in once)", client_credentials: "Client credentials (app permission)" }),
        form.text("Mailbox", A + "username", { placeholder: "sender@contoso.com", help: "The mailbox XOAUTH2 signs in as." }),
        this.msTenantField,
        form.text("Client (application) ID", A + "client_id"),
        form.secret("Client secret", A + "client_secret", A + "client_secret_set"),
        form.text("Redirect URI", A + "redirect_uri", { help: "Register this URI with the provider. Empty: mailgate's default.", wide: true }),
        this.customFields),
      this.status = h("div", { class: "oauth-status" }));
  }

  // After every edit: show the fields of the chosen method and provider.
  sync() {
    const auth = this.form.v.authentication;
    this.el.hidden = auth.method !== "oauth2";
    this.msTenantField.hidden = auth.provider !== "microsoft";
    this.customFields.hidden = auth.provider !== "custom";
    if (auth.method === "oauth2") this.renderStatus();
  }

  // The `authentication` object to send (secrets are added by the form).
  body() {
    const a = this.form.v.authentication;
    const pick = (...keys) => Object.fromEntries(keys.map((k) => [k, a[k] ?? null]));
    const auth = { method: "oauth2", ...pick("provider", "grant", "username", "client_id", "redirect_uri", "scope", "authorize_url", "token_url") };
    if (a.provider === "microsoft") auth.directory_tenant_id = a.directory_tenant_id ?? null;
    if (!auth.provider) auth.provider = null;
    if (!auth.grant) auth.grant = null;
    return auth;
  }

  renderStatus() {
    const o = this.form.o;
    const st = o.value.oauth2_status;
    const auth = this.form.v.authentication;
    const saved = !o.isNew && o.value.authentication?.method === "oauth2";
    const box = this.status;
    if (!saved) { clear(box, h("p", { class: "muted" }, "Save the configuration, then authorize it here.")); return; }
    const code = auth.grant === "authorization_code";
    const needs = st?.state === "needs_reauthorization" || st?.state === "error";
    const authorize = h("button", { type: "button", class: needs || st?.state === "not_authorized" ? "primary" : "", disabled: !o.canEdit }, code ? (st?.state === "authorized" ? "Authorize again" : "Authorize") : "Get a token now");
    authorize.addEventListener("click", () => this.authorize(code, authorize));
    const forget = h("button", { type: "button", class: "danger small", disabled: !o.canEdit }, "Forget tokens");
    forget.addEventListener("click", async () => {
      try { await del(`${o.apiBase}/oauth2`); toast("Tokens forgotten"); o.onReload?.(); } catch (err) { toast(errorText(err), "bad"); }
    });
    clear(box, h("h3", {}, "Authorization"),
      needs ? banner("bad", h("strong", {}, "Re-authorization needed. "), st.last_error || "The provider no longer accepts the stored token. Mail to this server waits until someone authorizes again.") : null,
      st?.warning ? banner("warn", st.warning) : null,
      h("dl", { class: "kv" },
        h("dt", {}, "Status"), h("dd", {}, badge(st?.state || "not_authorized")),
        h("dt", {}, "Mailbox"), h("dd", {}, o.value.authentication.username || "—"),
        h("dt", {}, "Access token valid until"), h("dd", {}, fmtTime(st?.access_token_expires_at)),
        h("dt", {}, "Last refreshed"), h("dd", {}, fmtTime(st?.refresh_token_last_used_at)),
        st?.last_error && !needs ? [h("dt", {}, "Last error"), h("dd", {}, st.last_error)] : null),
      o.canEdit ? h("div", { class: "actions" }, authorize, st?.state && st.state !== "not_authorized" ? forget : null) : null);
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
