"""What mailgate knows about each OAuth2 provider: endpoints, scopes, quirks. Pure data and
functions; the token endpoint client (``adapters/oauth2.py``) gets the ``Endpoints`` made here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

# Microsoft identity platform, "Authenticate an IMAP, POP or SMTP connection using OAuth":
# delegated SMTP needs SMTP.Send on the outlook.office.com resource; offline_access gives
# the refresh token. App-only (client credentials) uses the .default scope of Exchange.
MICROSOFT_DELEGATED_SCOPE = "offline_access https://outlook.office.com/SMTP.Send"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
# Google, "OAuth 2.0 Mechanism" for Gmail SMTP: full mail scope; access_type=offline and
# prompt=consent make Google return a refresh token on every consent.
GOOGLE_SCOPE = "https://mail.google.com/"
# Microsoft Graph, "user: sendMail" permissions: delegated Mail.Send on the Graph resource;
# app-only asks for the permissions granted to the app (.default), of which Mail.Send must be
# one, scoped to mailboxes by Exchange RBAC for Applications.
GRAPH_DELEGATED_SCOPE = "offline_access https://graph.microsoft.com/Mail.Send"
GRAPH_APP_SCOPE = "https://graph.microsoft.com/.default"
# Google, "Choose Gmail API scopes": gmail.send is "sensitive" (SMTP's mail.google.com is
# "restricted", which external apps may only use after a security assessment).
GMAIL_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"
# Microsoft: AADSTS7000222 "The provided client secret keys are expired".
EXPIRED_SECRET_CODE = "AADSTS7000222"


@dataclass(frozen=True)
class ProviderSettings:
    """Endpoint bases from ``MAILGATE_OAUTH_*`` (tests point them at a local server)."""

    microsoft_authority: str
    google_authorize_url: str
    google_token_url: str


@dataclass(frozen=True)
class Endpoints:
    authorize_url: str | None
    token_url: str
    scope: str
    authorize_params: dict[str, str] = field(default_factory=dict)
    send_scope_on_refresh: bool = True


def endpoints_for(
    settings: ProviderSettings,
    *,
    provider: str,
    grant: str,
    directory_tenant_id: str | None = None,
    scope: str | None = None,
    authorize_url: str | None = None,
    token_url: str | None = None,
    transport: str = "smtp",
) -> Endpoints:
    """The endpoints and scope of a configuration; explicit URLs and scope win over presets.
    The preset scope depends on the transport the token is for (SMTP, Graph, Gmail API)."""
    app_only = grant == "client_credentials"
    if provider == "microsoft":
        directory = quote(directory_tenant_id or "", safe="")
        base = f"{settings.microsoft_authority.rstrip('/')}/{directory}"
        return Endpoints(
            authorize_url=authorize_url or f"{base}/oauth2/v2.0/authorize",
            token_url=token_url or f"{base}/oauth2/v2.0/token",
            scope=scope or default_scope(provider, app_only, transport),
            authorize_params={"response_mode": "query"},
        )
    if provider == "google":
        return Endpoints(
            authorize_url=authorize_url or settings.google_authorize_url,
            token_url=token_url or settings.google_token_url,
            scope=scope or default_scope(provider, app_only, transport),
            authorize_params={"access_type": "offline", "prompt": "consent"},
            # Google refreshes without a scope; sending one only risks invalid_scope.
            send_scope_on_refresh=False,
        )
    if not token_url or not scope:
        raise ValueError("a custom provider needs token_url and scope")
    return Endpoints(authorize_url=authorize_url, token_url=token_url, scope=scope)


def default_scope(provider: str, app_only: bool, transport: str = "smtp") -> str:
    """The scope mailgate asks for when the configuration names none."""
    if provider == "microsoft":
        if transport == "microsoft_graph":
            return GRAPH_APP_SCOPE if app_only else GRAPH_DELEGATED_SCOPE
        return MICROSOFT_APP_SCOPE if app_only else MICROSOFT_DELEGATED_SCOPE
    if provider == "google":
        return GMAIL_SEND_SCOPE if transport == "gmail_api" else GOOGLE_SCOPE
    raise ValueError(f"no preset scope for provider {provider!r}")


def oauth2_hint(auth: dict[str, Any], kind: str | None) -> str | None:
    """Advice for an OAuth2 configuration over SMTP that the generic SMTP hints cannot give."""
    if (
        kind == "auth_failed"
        and auth.get("method") == "oauth2"
        and auth.get("grant") == "client_credentials"
        and auth.get("provider") == "microsoft"
    ):
        return (
            "Exchange Online refused the app-only token. The app needs the application "
            "permission SMTP.SendAsApp (Office 365 Exchange Online) with admin consent, its "
            "service principal registered in Exchange (New-ServicePrincipal -AppId <client id> "
            "-ObjectId <enterprise app object id>) and access to the mailbox "
            "(Add-MailboxPermission -Identity <mailbox> -User <object id> -AccessRights "
            "FullAccess). Changes can take up to an hour to apply."
        )
    return None
