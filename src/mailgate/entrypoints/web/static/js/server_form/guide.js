// What to set up at Microsoft or Google for a configuration: the steps by transport, provider
// and grant, with the exact values to copy (redirect URI, permissions, PowerShell lines).
// Pure data built from the form's current values; rendered by the OAuth2 panel.
import { h, toast } from "../ui.js";

export const TRANSPORTS = {
  smtp: { label: "SMTP", note: "Any mail server: Exchange Online, Gmail, your own relay. Host, port, TLS and a login." },
  microsoft_graph: { label: "Microsoft Graph", note: "Microsoft 365 mailboxes where SMTP AUTH is off. Sends through the Graph API with an OAuth2 app registration." },
  gmail_api: { label: "Gmail API", note: "Google Workspace or Gmail mailboxes. Sends through the Gmail API with the gmail.send scope." },
};
// The OAuth2 provider each API transport needs.
export const API_PROVIDER = { microsoft_graph: "microsoft", gmail_api: "google" };
// Connection fields a provider's SMTP service needs (prefilled when the provider is chosen).
export const SMTP_PRESETS = {
  microsoft: { host: "smtp.office365.com", port: 587, protocol: "smtp", starttls: "required" },
  google: { host: "smtp.gmail.com", port: 587, protocol: "smtp", starttls: "required" },
};

// Copy a value to the clipboard (with a fallback for http:// pages, where the Clipboard API is
// missing) and say so.
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const ta = h("textarea", { class: "offscreen", readonly: true });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    document.execCommand("copy");
    ta.remove();
  }
  toast("Copied to the clipboard");
}

// A value to copy: the value in code type and a small Copy button.
export function copyable(value, label = "Copy") {
  const b = h("button", { type: "button", class: "small copy", "aria-label": `${label}: ${value}` }, "Copy");
  b.addEventListener("click", () => copyText(value));
  return h("span", { class: "copy-value" }, h("code", {}, value), b);
}

const ENTRA = "Microsoft Entra admin center (entra.microsoft.com)";
const SP = "<object id of the enterprise application>";

/**
 * The steps for a configuration, or null when there is nothing to set up at a provider.
 * v: { transport, provider, grant, mailbox, clientId, redirectUri }.
 * Each step: { title, body: [text or Node] }.
 */
export function setupSteps(v) {
  const mailbox = v.mailbox || "<mailbox>";
  const clientId = v.clientId || "<application (client) id>";
  const appOnly = v.grant === "client_credentials";
  const steps = [];
  const add = (title, ...body) => steps.push({ title, body });
  if (v.provider === "microsoft") {
    const graph = v.transport === "microsoft_graph";
    add("Register an app",
      `In the ${ENTRA}: App registrations → New registration, "Accounts in this organizational directory only".`,
      appOnly ? " No redirect URI is needed for client credentials." : [" Redirect URI: platform Web, ", copyable(v.redirectUri, "Copy redirect URI")]);
    add("Create a client secret", "Certificates & secrets → New client secret. Copy its Value (not the Secret ID) into Client secret below, and note when it expires.");
    if (graph && !appOnly) add("Add the permissions", "API permissions → Add a permission → Microsoft Graph → Delegated permissions: ", copyable("Mail.Send"), " and ", copyable("offline_access"), ". Then Grant admin consent (or the mailbox owner consents when authorizing).");
    if (graph && appOnly) add("Add the permission", "API permissions → Add a permission → Microsoft Graph → Application permissions: ", copyable("Mail.Send"), ", then Grant admin consent. That lets the app send as every mailbox; to allow only this one, skip the consent and scope it in Exchange (next step).");
    if (!graph && !appOnly) add("Add the permissions", "API permissions → Add a permission → Microsoft Graph → Delegated permissions: ", copyable("SMTP.Send"), " and ", copyable("offline_access"), ". Then Grant admin consent.");
    if (!graph && appOnly) add("Add the permission", "API permissions → Add a permission → APIs my organization uses → Office 365 Exchange Online → Application permissions: ", copyable("SMTP.SendAsApp"), ", then Grant admin consent.");
    add("Copy the IDs", "From the app's Overview, copy Application (client) ID and Directory (tenant) ID into the fields below.");
    if (graph && appOnly) {
      add("Scope it to the mailbox in Exchange (RBAC for Applications)", "In Exchange Online PowerShell (Connect-ExchangeOnline):",
        h("span", { class: "cmds" },
          copyable(`New-ServicePrincipal -AppId ${clientId} -ObjectId ${SP} -DisplayName mailgate`),
          copyable(`New-ManagementScope -Name "mailgate senders" -RecipientRestrictionFilter "PrimarySmtpAddress -eq '${mailbox}'"`),
          copyable(`New-ManagementRoleAssignment -App ${clientId} -Role "Application Mail.Send" -CustomResourceScope "mailgate senders"`)));
    }
    if (!graph) {
      const cmds = [copyable(`Set-CASMailbox -Identity ${mailbox} -SmtpClientAuthenticationDisabled $false`)];
      if (appOnly) {
        cmds.push(copyable(`New-ServicePrincipal -AppId ${clientId} -ObjectId ${SP}`),
          copyable(`Add-MailboxPermission -Identity ${mailbox} -User ${SP} -AccessRights FullAccess`));
      }
      add(appOnly ? "Turn on SMTP AUTH and let the app use the mailbox" : "Turn on SMTP AUTH for the mailbox",
        "Exchange Online turns SMTP AUTH off by default. In Exchange Online PowerShell (Connect-ExchangeOnline):",
        h("span", { class: "cmds" }, cmds),
        " If your organization allows no SMTP AUTH at all, choose the Microsoft Graph transport instead.");
    }
    add(appOnly ? "Save and get a token" : "Save and authorize",
      appOnly ? "Save this configuration, then press Get a token now below." : `Save this configuration, then press Authorize below and sign in as ${mailbox}.`);
    return steps;
  }
  if (v.provider === "google") {
    const api = v.transport === "gmail_api";
    if (api) add("Enable the Gmail API", "In the Google Cloud console (console.cloud.google.com): APIs & Services → Library → Gmail API → Enable.");
    add("Set up the consent screen",
      "Google Auth Platform → Audience: Internal for a Workspace organization. External apps in Testing status get refresh tokens that expire after 7 days. Data access → Add or remove scopes: ",
      copyable(api ? "https://www.googleapis.com/auth/gmail.send" : "https://mail.google.com/"),
      api ? "." : " (a restricted scope: external apps need Google's security assessment; the Gmail API transport needs only gmail.send).");
    add("Create the OAuth client", "Clients → Create client → Web application. Authorized redirect URIs: ", copyable(v.redirectUri, "Copy redirect URI"));
    add("Copy the client", "Copy the Client ID and the Client secret into the fields below.");
    add("Save and authorize", `Save this configuration, then press Authorize below and sign in as ${mailbox}.`);
    return steps;
  }
  if (v.provider === "custom") {
    add("Register mailgate as a client", "At your authorization server, register a confidential client", appOnly ? " allowed to use client credentials." : [" with the redirect URI ", copyable(v.redirectUri, "Copy redirect URI")],
      " and the scope your mail server needs for XOAUTH2. Enter its endpoints and scope below.");
    add(appOnly ? "Save and get a token" : "Save and authorize", appOnly ? "Save, then press Get a token now below." : "Save, then press Authorize below.");
    return steps;
  }
  return null;
}

// The steps as a numbered list.
export function renderSteps(steps, title) {
  return h("div", { class: "setup-guide" },
    h("h3", {}, title),
    h("ol", { class: "setup-steps" }, steps.map((s) => h("li", {},
      h("strong", { class: "step-title" }, s.title), h("div", { class: "step-body" }, s.body)))));
}
