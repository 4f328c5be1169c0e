"""Advice for the admin when a server test fails: by the failure's kind first, then by the
server's reply (code, RFC 3463 enhanced code and text, with known provider quirks such as
Microsoft 365's 5.7.139 and SendAsDenied).

``KIND_HINTS`` names every ``FailureKind`` (a unit test holds it to that); ``None`` there
means the reply says more than the kind.

The HTTP mail APIs (Microsoft Graph, Gmail API) have their own table, ``api_hint``: their
replies are HTTP statuses with the API's error code, and the SMTP rules (``535``, 4xx
meaning "try later") must never read them. ``hint_for`` sends them there by transport.
"""

from __future__ import annotations

from mailgate.domain.pauses import PauseKind, classify_smtp
from mailgate.domain.transport import FailureKind, Reply


def hint_for(
    step: str,
    kind: FailureKind | None,
    reply: Reply | None,
    *,
    transport: str = "smtp",
    app_only: bool = False,
) -> str | None:
    """Advice for a failure at ``step``. ``None`` when there is nothing better to say."""
    if transport != "smtp":
        return api_hint(transport, kind, reply, app_only=app_only)
    simple = KIND_HINTS.get(kind) if kind is not None else None
    if simple:
        return simple
    if reply is None or reply.code is None:
        return None
    code, enh, text = reply.code, reply.enhanced or "", reply.text.lower()
    if enh == "5.7.139":
        return (
            "SMTP AUTH is disabled for this mailbox (Microsoft 365). An Exchange admin can "
            "enable it: Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled "
            "$false, and check that security defaults do not block it."
        )
    if step == "auth" and code == 535:
        return (
            "The server rejected the credentials (535 "
            + (enh or "")
            + "). Check the user name and password; with Microsoft 365 or Gmail and "
            "multi-factor sign-in use an app password or OAuth2. For OAuth2, check that the "
            "mailbox in 'username' is the one that authorized the app and that the app has "
            "the SMTP.Send (or SMTP.SendAsApp) permission."
        )
    if code == 530 and ("starttls" in text or "tls" in text):
        return (
            "The server wants STARTTLS before anything else (530 5.7.0): set starttls to "
            "'required' or use protocol 'smtps'."
        )
    if code == 530 or enh == "5.7.57":
        return (
            "The server requires authentication before sending: configure a password or "
            "OAuth2 under authentication."
        )
    pause = classify_smtp(code, reply.enhanced, reply.text)
    if pause is not None and pause.kind is PauseKind.QUOTA:
        return (
            "The provider says this mailbox's sending quota is used up. Real mail is not "
            "failed: the configuration pauses (an hour, then one message tries again) until "
            "the quota is back. Raise the mailbox's limit with the provider, or keep below it "
            "with limits.recipients_per_day and limits.messages_per_minute (presets: "
            "GET .../limit-presets)."
        )
    if pause is not None:
        return (
            "A temporary refusal: the provider is throttling (too many messages or connections "
            "at once). Real mail waits (the configuration pauses, then one message tries "
            "again); keep below the "
            "provider's limits with limits.max_connections and limits.messages_per_minute "
            "(Microsoft 365: 3 connections, 30 a minute)."
        )
    if enh == "5.7.60" or "sendasdenied" in text:
        return (
            "The mailbox is not allowed to send as this From address (SendAsDenied). Use the "
            "authenticated mailbox as from_address, or grant it 'Send As' permission."
        )
    if (enh in ("5.7.1", "5.7.64") and ("relay" in text or step == "rcpt_to")) or (
        "relay" in text and code >= 500
    ):
        return (
            "The server refuses to relay to this recipient: authenticate (authentication), or "
            "ask the mail administrator to allow relaying from mailgate's address."
        )
    if code == 552 or enh in ("5.3.4", "5.2.3") or "too large" in text or "too big" in text:
        return KIND_HINTS[FailureKind.TOO_LARGE]
    if enh.startswith("5.1.") and step == "rcpt_to":
        return "The server does not know this recipient address; check it for typos."
    if enh.startswith("5.1.") and step == "mail_from":
        return "The server refuses this sender address; check message_defaults.from_address."
    if code in (421, 450, 451, 452) or 400 <= code < 500:
        return (
            f"A temporary problem at the server ({code}): try again later. Real mail is "
            "retried automatically."
        )
    return None


KIND_HINTS: dict[FailureKind, str | None] = {
    # The HTTP mail APIs' kinds: api_hint.
    FailureKind.THROTTLED: None,
    FailureKind.WRONG_AUDIENCE: None,
    FailureKind.ACCESS_DENIED: None,
    FailureKind.MAILBOX_NOT_FOUND: None,
    FailureKind.REPLY: None,
    FailureKind.PROTOCOL: None,
    FailureKind.AUTH_FAILED: None,
    FailureKind.REMOTE: None,
    FailureKind.DNS: (
        "The host name does not resolve. Check the spelling of host and this machine's DNS."
    ),
    FailureKind.DESTINATION_DENIED: (
        "The installation's outbound policy does not allow connections to this address "
        "(system setting outbound_policy, MAILGATE_OUTBOUND_DENY); nothing was sent to it. "
        "Use another host, or ask the system administrator."
    ),
    FailureKind.REFUSED: (
        "Nothing accepts connections on this host and port. Check the port (587 for "
        "STARTTLS, 465 for smtps, 25 for relays) and any firewall in between."
    ),
    FailureKind.TIMEOUT: (
        "The server did not answer in time. A firewall may drop the traffic, the port may be "
        "wrong (465 expects protocol 'smtps'), or the server is overloaded; timeouts are "
        "configurable under timeouts."
    ),
    FailureKind.NETWORK: "The network connection failed; check the host, port and routing.",
    FailureKind.CERT_UNTRUSTED: (
        "The server's certificate is not trusted (self-signed or issued by an unknown CA). "
        "Add the issuing CA certificate (or the server certificate) in PEM form under "
        "tls.ca_certificates_pem instead of turning verification off."
    ),
    FailureKind.HOSTNAME_MISMATCH: (
        "The certificate does not name this host. Use the host name the certificate was "
        "issued for (e.g. smtp.office365.com, not an IP address or alias)."
    ),
    FailureKind.CERT_EXPIRED: (
        "The server's certificate has expired; the server's operator must renew it."
    ),
    FailureKind.TLS_FAILED: (
        "The TLS handshake failed. If the server requires a client certificate, configure "
        "tls.client_certificate_pem and tls.client_key_pem; with port 465 use protocol 'smtps', "
        "with 587/25 use 'smtp' and STARTTLS."
    ),
    FailureKind.TLS_CONFIG: (
        "The TLS settings could not be loaded: check tls.ca_certificates_pem and the client "
        "certificate and key (PEM, the key unencrypted and matching the certificate)."
    ),
    FailureKind.STARTTLS_MISSING: (
        "The server does not offer STARTTLS. Use protocol 'smtps' if it expects implicit TLS "
        "(usually port 465); only if the network path is trusted set starttls to 'disabled'."
    ),
    FailureKind.AUTH_MISSING: (
        "The server offers no authentication (AUTH) here. Many servers offer AUTH only after "
        "STARTTLS, or on port 587 rather than 25; or choose authentication 'none' for a relay "
        "that trusts mailgate's address."
    ),
    FailureKind.AUTH_MECHANISM_MISSING: (
        "The server offers no authentication mechanism mailgate can use for this method "
        "(PLAIN or LOGIN for passwords, XOAUTH2 for OAuth2)."
    ),
    FailureKind.PLAINTEXT_AUTH_REFUSED: (
        "mailgate refuses to send credentials over an unencrypted connection. Use STARTTLS "
        "(starttls 'required') or 'smtps'."
    ),
    FailureKind.OAUTH2_TOKEN: (
        "No OAuth2 access token could be obtained. Authorize the configuration again (or "
        "check the client secret for client credentials)."
    ),
    FailureKind.NO_TOKEN_PROVIDER: (
        "OAuth2 is not available in this process; authorize the server first."
    ),
    FailureKind.TOO_LARGE: (
        "The message is larger than the server accepts (SIZE). Send smaller attachments or "
        "raise the server's limit."
    ),
    FailureKind.SMTPUTF8: (
        "An address contains non-ASCII characters but the server does not support SMTPUTF8."
    ),
    FailureKind.DISCONNECTED: (
        "The server closed the connection unexpectedly. It may limit connections or rates; "
        "real mail is retried automatically."
    ),
}


# ---- Microsoft Graph and the Gmail API -------------------------------------------------------

_API = {"microsoft_graph": "Microsoft Graph", "gmail_api": "the Gmail API"}
_API_HOST = {"microsoft_graph": "graph.microsoft.com", "gmail_api": "gmail.googleapis.com"}
_API_SETTING = {
    "microsoft_graph": "MAILGATE_GRAPH_BASE_URL",
    "gmail_api": "MAILGATE_GMAIL_API_BASE_URL",
}

# Microsoft identity platform errors (AADSTS codes, "Microsoft Entra authentication and
# authorization error codes"): what the admin does about each.
AADSTS_HINTS: dict[str, str] = {
    "AADSTS65001": (
        "Consent is missing: the user (or, for application permissions, an administrator) has "
        "not consented to the app's permissions. In the Entra admin center open the app "
        "registration > API permissions, add Microsoft Graph Mail.Send and choose 'Grant admin "
        "consent', then authorize again."
    ),
    "AADSTS650057": (
        "The app asks for a permission its registration does not list: add Microsoft Graph "
        "Mail.Send under API permissions (delegated for authorization_code, application for "
        "client_credentials) and grant consent."
    ),
    "AADSTS700016": (
        "The directory does not know the app: check client_id and directory_tenant_id (the app "
        "must be registered in, or consented to by, that Entra tenant)."
    ),
    "AADSTS7000215": (
        "The client secret is wrong: paste the secret's Value (shown once when it is created), "
        "not its Secret ID."
    ),
    "AADSTS7000222": (
        "The client secret has expired: create a new one under Certificates & secrets and save "
        "it in this configuration."
    ),
    "AADSTS50011": (
        "The redirect URI is not registered: add this configuration's redirect_uri exactly "
        "(scheme, host, port, path) under Authentication > Web in the app registration."
    ),
    "AADSTS90002": "The directory tenant does not exist: check directory_tenant_id.",
    "AADSTS500011": (
        "The resource in the scope does not exist in this directory: leave authentication.scope "
        "empty so that mailgate asks for Microsoft Graph."
    ),
    "AADSTS70011": (
        "The scope is invalid for this grant: client_credentials needs "
        "https://graph.microsoft.com/.default (leave authentication.scope empty)."
    ),
    "AADSTS1002012": (
        "Client credentials need a '.default' scope: leave authentication.scope empty."
    ),
    "AADSTS53003": (
        "Conditional Access blocked the sign-in: an Entra admin must allow this app (or "
        "mailgate's address) in the policy named in the sign-in logs."
    ),
    "AADSTS50076": (
        "Multi-factor authentication is now required: authorize again (the sign-in page asks "
        "for it)."
    ),
    "AADSTS50173": "The grant was revoked (password change or admin action): authorize again.",
    "AADSTS70000": "The grant is no longer valid: authorize again.",
    "AADSTS700082": "The refresh token expired after 90 days unused: authorize again.",
}


def api_hint(
    transport: str, kind: FailureKind | None, reply: Reply | None, *, app_only: bool = False
) -> str | None:
    """Advice for a Graph or Gmail API failure (the ``token`` or ``send`` step)."""
    api = _API.get(transport, "the mail API")
    graph = transport == "microsoft_graph"
    code = (reply.enhanced or "") if reply is not None else ""
    if kind is FailureKind.OAUTH2_TOKEN:
        if code in AADSTS_HINTS:
            return AADSTS_HINTS[code]
        if code.startswith("AADSTS"):
            return (
                f"Microsoft's sign-in refused ({code}): look the code up at "
                f"https://login.microsoftonline.com/error?code={code[6:]} and authorize again "
                "once it is fixed."
            )
        generic = KIND_HINTS[FailureKind.OAUTH2_TOKEN] or ""
        if graph:
            return generic
        return (
            generic + " Google: apps in 'testing' status lose their refresh tokens after 7 "
            "days; publish the OAuth consent screen."
        )
    if kind is FailureKind.NO_TOKEN_PROVIDER:
        return (
            f"{api} takes OAuth2 tokens only: save the configuration and authorize it "
            "(client credentials need no browser sign-in, just saving)."
        )
    if kind is FailureKind.WRONG_AUDIENCE:
        return (
            f"The access token is meant for another API, not {api}. Leave authentication.scope "
            "empty (mailgate then asks for https://graph.microsoft.com/Mail.Send, or "
            "https://graph.microsoft.com/.default for client credentials) and authorize again."
        )
    if kind is FailureKind.ACCESS_DENIED and graph:
        if code == "ErrorSendAsDenied":
            return (
                "The mailbox may not send as this From address: set "
                "message_defaults.from_address to the mailbox itself, or let the Exchange "
                "admin grant it Send As (Add-RecipientPermission)."
            )
        if app_only:
            return (
                "The app may not send as this mailbox. Scope it with Exchange RBAC for "
                "Applications (Exchange Online PowerShell: New-ServicePrincipal -AppId <client "
                "id> -ObjectId <enterprise app object id>; New-ManagementScope -Name mailgate "
                "-RecipientRestrictionFilter \"PrimarySmtpAddress -eq '<mailbox>'\"; "
                "New-ManagementRoleAssignment -App <client id> -Role 'Application Mail.Send' "
                "-CustomResourceScope mailgate; add 'Application Mail.ReadWrite' for messages "
                "above 4 MB), or grant the app the Microsoft Graph application permission "
                "Mail.Send with admin consent - which reaches every mailbox of the tenant, "
                "since Entra grants and RBAC assignments add up (Application Access Policies "
                "are being replaced). Also check authentication.username. Changes can take up "
                "to an hour to apply."
            )
        return (
            "The signed-in account may not send as this mailbox: authorize as the mailbox in "
            "authentication.username (or an account with Send As on it), and make sure the "
            "delegated permission Mail.Send is consented."
        )
    if kind is FailureKind.ACCESS_DENIED:
        if code in ("insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"):
            return (
                "The authorization lacks the gmail.send scope: add "
                "https://www.googleapis.com/auth/gmail.send to the OAuth consent screen's "
                "scopes, leave authentication.scope empty, and authorize again."
            )
        return (
            "Gmail refused to send for this account: a Google Workspace admin may have "
            "restricted the Gmail API or this app (Security > API controls), or the account "
            "cannot send mail."
        )
    if kind is FailureKind.MAILBOX_NOT_FOUND:
        return (
            f"{api} does not know the mailbox in authentication.username: use its primary "
            "e-mail address or user principal name. A mailbox without an Exchange Online "
            "licence, or hosted on premises, cannot send through Graph "
            "(MailboxNotEnabledForRESTAPI)."
            if graph
            else "Gmail does not know this account: authorize with the Google account that sends."
        )
    if kind is FailureKind.AUTH_FAILED:
        return (
            f"{api} refused the access token even after a refresh. Authorize again; for "
            "client credentials check that the app registration belongs to the mailbox's "
            "directory (directory_tenant_id) and has admin consent."
            if graph
            else f"{api} refused the access token even after a refresh: authorize again."
        )
    if kind is FailureKind.THROTTLED:
        return (
            f"{api} is throttling this mailbox; mail waits as long as it asks (Retry-After) "
            "and is retried automatically. "
            + (
                "Graph allows 4 concurrent requests per mailbox, and Exchange Online 30 "
                "messages a minute and 10,000 recipients a day: lower "
                "limits.messages_per_minute."
                if graph
                else "Gmail sends at most 2,000 messages a day from a Workspace account (500 "
                "from a consumer account): lower limits.messages_per_minute."
            )
        )
    if kind is FailureKind.TOO_LARGE:
        return (
            "The message is larger than Graph sends (150 MB; the mailbox's own limit, 35 MB by "
            "default, may be lower)."
            if graph
            else "The message is larger than the Gmail API takes (35 MB; Gmail itself "
            "delivers at most 25 MB)."
        )
    if kind is FailureKind.DESTINATION_DENIED:
        return (
            f"The installation's outbound policy does not allow connections to {api} at this "
            "address (system setting outbound_policy, MAILGATE_OUTBOUND_DENY); nothing was sent."
        )
    if kind in (FailureKind.TIMEOUT, FailureKind.REFUSED, FailureKind.NETWORK, FailureKind.DNS):
        return (
            f"{api} cannot be reached from here: allow outbound HTTPS (port 443) to "
            f"{_API_HOST.get(transport, 'the API')}, through the proxy if there is one, and "
            f"check {_API_SETTING.get(transport, 'the base URL setting')}."
        )
    if kind in (FailureKind.CERT_UNTRUSTED, FailureKind.HOSTNAME_MISMATCH, FailureKind.TLS_FAILED):
        return (
            f"The TLS connection to {api} failed. A proxy that inspects TLS needs its CA in "
            "MAILGATE_OAUTH_CA_BUNDLE."
        )
    if reply is not None and reply.code is not None and reply.code >= 500:
        return f"{api} had a temporary problem ({reply.code}); real mail is retried automatically."
    if reply is not None and reply.code == 400:
        return (
            f"{api} refused the message as malformed ({code or '400'}): the reply says which "
            "part; real mail with this problem fails."
        )
    return None
