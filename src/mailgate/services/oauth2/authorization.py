"""The OAuth2 authorization code grant of an e-mail server (RFC 6749 section 4.1, PKCE per
RFC 7636): the authorize URL with a single-use ``state``, the callback's code exchange, and
forgetting the tokens again.

A pending flow is a row of ``oauth2_authorizations``: the SHA-256 of its ``state`` (the state
itself is a credential and never stored) and the PKCE verifier, encrypted. The callback spends
the state whatever the outcome; an unknown, used or expired one changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote, urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import EmailServer, OAuth2Authorization, Tenant
from mailgate.domain.clock import Clock
from mailgate.domain.errors import BadRequest, Conflict
from mailgate.domain.oauth2 import (
    EndpointUnreachable,
    NeedsAuthorization,
    OAuth2State,
    TokenRefused,
    TokenSet,
)
from mailgate.domain.oauth2_providers import ProviderSettings
from mailgate.ports import SecretCipher, TokenEndpoint
from mailgate.services.email_servers import EmailServers
from mailgate.services.oauth2.tokens import (
    TokenRequestCounter,
    client_secret_of,
    endpoints_of,
    oauth2_settings,
    store_token_set,
)

log = logging.getLogger("mailgate.oauth2")

STATE_LIFETIME = timedelta(minutes=10)


@dataclass(frozen=True)
class CallbackResult:
    tenant: str
    server: str
    ok: bool
    message: str
    tenant_id: int | None = None
    account: str | None = None
    """Who consented at the provider, as the access token names them (None: it does not)."""


class CallbackRejected(BadRequest):
    """An OAuth2 callback with a missing, unknown, used or expired ``state`` (nothing was
    stored). ``server`` names the configuration when the state is known, so a person can be
    sent back to it: (tenant name or "" for the system e-mail server, server name)."""

    def __init__(self, detail: str, server: tuple[str, str] | None = None) -> None:
        super().__init__(detail)
        self.server = server


def _authorized_as(row: EmailServer) -> str:
    """What an authorization is for: the transport and the OAuth2 settings (the app, the
    endpoints, the account). Tokens from a flow started for other values are not kept."""
    return json.dumps(
        [row.config.get("transport"), row.config.get("authentication")], sort_keys=True
    )


@dataclass(frozen=True)
class Started:
    """A started authorization: the provider's URL, and the cookie (name, value) the
    starting browser must carry back to the callback."""

    url: str
    cookie_name: str
    cookie_value: str


BROWSER_COOKIE_PREFIX = "mailgate_oauth2_"


def browser_cookie_name(state: str) -> str:
    """The cookie of one flow (several may run in one browser)."""
    return BROWSER_COOKIE_PREFIX + _state_hash(state)[:16]


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def _verifier_context(state_hash: str) -> str:
    return f"oauth2-state:{state_hash}"


class OAuth2AuthorizationFlow:
    def __init__(
        self,
        *,
        servers: EmailServers,
        cipher: SecretCipher,
        endpoint: TokenEndpoint,
        providers: ProviderSettings,
        clock: Clock,
        on_token_request: TokenRequestCounter | None = None,
    ) -> None:
        self.servers = servers
        self.cipher = cipher
        self.endpoint = endpoint
        self.providers = providers
        self.clock = clock
        self.on_token_request = on_token_request

    def _count(self, result: str) -> None:
        if self.on_token_request is not None:
            self.on_token_request(result)

    def begin(self, db: Session, row: EmailServer) -> Started:
        """A fresh authorization URL with single-use ``state`` and PKCE S256 (RFC 7636),
        and the cookie that binds the flow to the browser that started it."""
        auth = oauth2_settings(row)
        if auth.get("grant") != "authorization_code":
            raise Conflict(
                "this configuration uses the client credentials grant: it needs no "
                "authorization, tokens come straight from the token endpoint"
            )
        now = self.clock()
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters, within RFC 7636's 43..128
        redirect_uri = auth["redirect_uri"]
        url = self.endpoint.authorization_url(
            endpoints_of(self.providers, row),
            client_id=auth["client_id"],
            redirect_uri=redirect_uri,
            state=state,
            code_verifier=verifier,
        )
        digest = _state_hash(state)
        browser_key = secrets.token_urlsafe(32)
        # The verifier and the hash of the browser's key, encrypted together.
        sealed = f"{verifier}\n{_key_hash(browser_key)}".encode()
        db.add(
            OAuth2Authorization(
                state_hash=digest,
                tenant_id=row.tenant_id,
                server_id=row.id,
                code_verifier_enc=self.cipher.encrypt(sealed, _verifier_context(digest)),
                redirect_uri=redirect_uri,
                created_at=now,
                expires_at=now + STATE_LIFETIME,
            )
        )
        # Expired flows are useless; dropping them here keeps the table small without a job.
        for old in db.scalars(
            select(OAuth2Authorization).where(OAuth2Authorization.expires_at < now)
        ):
            db.delete(old)
        db.flush()
        return Started(url, browser_cookie_name(state), browser_key)

    def complete(
        self,
        db: Session,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        error_description: str | None,
        browser_key: str | None = None,
    ) -> CallbackResult:
        """The redirect target. An unknown, used or expired ``state`` raises ``BadRequest``
        before anything is written; otherwise the state is spent whatever the outcome.
        ``browser_key`` is the flow's cookie (``browser_cookie_name``): without the key of
        the browser that started the flow, nothing is stored - a person lured into
        consenting cannot authorize someone else's configuration with their account.

        Three steps, so that no transaction is open while the token endpoint (the tenant's
        choice of URL) is waited for: spend the state and read what the exchange needs
        (committed), exchange the code, store the tokens if the configuration is still
        the one that was authorized."""
        now = self.clock()
        if not state:
            raise CallbackRejected("the OAuth2 callback has no state parameter")
        pending = db.scalar(
            select(OAuth2Authorization)
            .where(OAuth2Authorization.state_hash == _state_hash(state))
            .with_for_update()
        )
        if pending is None:
            raise CallbackRejected(
                "unknown or already used OAuth2 state; start the authorization again"
            )
        row = db.get(EmailServer, pending.server_id, with_for_update=True)
        if row is None or row.tenant_id != pending.tenant_id:
            raise CallbackRejected("the e-mail server of this authorization no longer exists")
        tenant = db.get(Tenant, row.tenant_id) if row.tenant_id is not None else None
        where = (tenant.name if tenant else "", row.name)
        if pending.used_at is not None:
            raise CallbackRejected(
                "unknown or already used OAuth2 state; start the authorization again", where
            )
        if pending.expires_at <= now:
            raise CallbackRejected(
                "this OAuth2 authorization expired (10 minutes); start it again", where
            )
        sealed = self.cipher.decrypt(
            pending.code_verifier_enc, _verifier_context(pending.state_hash)
        ).decode()
        verifier, _, bound_to = sealed.partition("\n")
        if bound_to and (browser_key is None or _key_hash(browser_key) != bound_to):
            raise CallbackRejected(
                "this authorization was started in another browser (or its cookie is gone): "
                "start it again here, in the browser that signs in at the provider",
                where,
            )
        tenant_name = where[0]
        server_name = row.name
        pending.used_at = now

        server_tenant_id = row.tenant_id

        def result(ok: bool, message: str, account: str | None = None) -> CallbackResult:
            return CallbackResult(tenant_name, server_name, ok, message, server_tenant_id, account)

        if error:
            # RFC 6749 section 4.1.2.1: the provider reports refusals to the redirect URI.
            row.oauth2_last_error = f"{error}: {error_description or ''}".strip(": ")
            return result(False, f"the provider refused: {error_description or error}")
        if not code:
            return result(False, "the provider sent neither a code nor an error")
        auth = oauth2_settings(row)
        try:
            secret = client_secret_of(self.servers, row)
        except NeedsAuthorization as exc:
            row.oauth2_last_error = str(exc)
            return result(False, f"the code exchange failed: {exc}")
        endpoints = endpoints_of(self.providers, row)
        redirect_uri = pending.redirect_uri
        authorized = _authorized_as(row)
        server_id = row.id
        db.commit()  # the state is spent; nothing is locked while the endpoint answers

        try:
            tokens = self.endpoint.exchange_code(
                endpoints,
                client_id=auth["client_id"],
                client_secret=secret,
                redirect_uri=redirect_uri,
                code=code,
                code_verifier=verifier,
                now=now,
            )
        except (TokenRefused, EndpointUnreachable) as exc:
            self._count("refused" if isinstance(exc, TokenRefused) else "unavailable")
            text = exc.description if isinstance(exc, TokenRefused) else str(exc)
            self._record_error(db, server_id, authorized, str(exc))
            return result(False, f"the code exchange failed: {text}")
        if tokens.refresh_token is None:
            self._record_error(db, server_id, authorized, "the provider returned no refresh token")
            return result(
                False,
                "the provider returned no refresh token (Microsoft: add the offline_access "
                "scope; Google: access_type=offline and prompt=consent)",
            )
        self._count("ok")
        row = self._still_authorized(db, server_id, authorized)
        if row is None:
            return result(
                False,
                "the configuration was changed or deleted during the authorization; start it again",
            )
        store_token_set(self.servers, row, tokens, self.clock(), previous={})
        log.info("oauth2: server %s authorized", row.id)
        how = {
            "microsoft_graph": "through Microsoft Graph",
            "gmail_api": "through the Gmail API",
        }.get(str(row.config.get("transport")), "with XOAUTH2")
        return result(
            True, f"authorized: mail is sent {how} from now on", consenting_account(tokens)
        )

    @staticmethod
    def _still_authorized(db: Session, server_id: int, authorized: str) -> EmailServer | None:
        """The configuration, locked, if it still is what was authorized."""
        row = db.get(EmailServer, server_id, with_for_update=True, populate_existing=True)
        if row is None or _authorized_as(row) != authorized:
            return None
        return row

    def _record_error(self, db: Session, server_id: int, authorized: str, text: str) -> None:
        row = self._still_authorized(db, server_id, authorized)
        if row is not None:
            row.oauth2_last_error = text

    def forget(self, db: Session, row: EmailServer) -> None:
        """Forget the tokens (DELETE .../oauth2). The consent at the provider stays."""
        oauth2_settings(row)
        db.refresh(row, with_for_update=True)
        self.servers.store_tokens(row, {})
        row.oauth2_state = OAuth2State.NOT_AUTHORIZED.value
        row.access_token_expires_at = None
        row.refresh_token_last_used_at = None
        row.oauth2_last_error = None
        row.oauth2_warning = None
        row.oauth2_retry_at = None
        row.updated_at = self.clock()


def consenting_account(tokens: TokenSet) -> str | None:
    """The account that consented, for the audit trail: a JWT access token's user claim
    (Microsoft's are JWTs; Google's are opaque: None). Read, not trusted - only the API
    validates a token - and only a name is kept, never the token."""
    parts = tokens.access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, binascii.Error):
        return None
    if not isinstance(claims, dict):
        return None
    for claim in ("upn", "preferred_username", "unique_name", "email", "app_displayname"):
        value = claims.get(claim)
        if isinstance(value, str) and value:
            return value[:200]
    return None


def ui_redirect(result: CallbackResult) -> str:
    """Where the browser goes after the callback (the server's page in the web UI)."""
    outcome = {"oauth2": "ok" if result.ok else "error", "message": result.message}
    return server_page(result.tenant, result.server, outcome)


def server_page(tenant: str, server: str, query: dict[str, str] | None = None) -> str:
    """The web UI page of a configuration (tenant "" is the system e-mail server)."""
    if not tenant:
        return "/ui/system-email-server" + (f"?{urlencode(query)}" if query else "")
    q = urlencode({"tenant": tenant, **(query or {})})
    return f"/ui/email-servers/{quote(server, safe='')}?{q}"
