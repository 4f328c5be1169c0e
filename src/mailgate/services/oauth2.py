"""OAuth2 for e-mail servers: authorization code flow, token life, failure handling, keeper.

Tokens live encrypted in ``email_servers.tokens_enc`` (``EmailServers.store_tokens``); the
``oauth2_*`` columns are their readable status. Every refresh of one configuration runs under
a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serializes
writers), and re-reads the row once it holds the lock, so two processes never spend one
refresh token twice: the second finds the fresh token the first stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.tables import (
    EmailServer,
    Membership,
    OAuth2Authorization,
    Tenant,
    User,
)
from mailgate.adapters.oauth2 import (
    Endpoints,
    EndpointUnreachable,
    OAuth2Http,
    ProviderSettings,
    TokenRefused,
    TokenSet,
    endpoints_for,
)
from mailgate.adapters.secrets import SecretBox
from mailgate.domain.access import Role
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import BadRequest, Conflict
from mailgate.domain.oauth2 import (
    KEEPALIVE_AFTER,
    NeedsAuthorization,
    OAuth2State,
    Refusal,
    TokenEndpointDown,
    TokenUnavailable,
    backoff,
    classify_refusal,
    needs_refresh,
    secret_warning,
)
from mailgate.services.email_servers import EmailServers

log = logging.getLogger("mailgate.oauth2")

STATE_LIFETIME = timedelta(minutes=10)
# Microsoft: AADSTS7000222 "The provided client secret keys are expired".
_EXPIRED_SECRET_CODE = "AADSTS7000222"


class SystemMailer(Protocol):
    """Sends installation mail through the system e-mail server."""

    def send_system_mail(self, to: str, subject: str, text: str) -> None: ...


@dataclass(frozen=True)
class CallbackResult:
    tenant: str
    server: str
    ok: bool
    message: str


@dataclass(frozen=True)
class TokenInfo:
    token: str
    refreshed: bool
    expires_at: datetime | None


@dataclass(frozen=True)
class _Outcome:
    token: TokenInfo | None = None
    error: Exception | None = None
    notify: tuple[int, str, str] | None = None  # tenant id, server name, reason


def _state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


class OAuth2Service:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        servers: EmailServers,
        box: SecretBox,
        clock: Clock,
        http: OAuth2Http,
        providers: ProviderSettings,
        public_base_url: str,
        mailer: SystemMailer | None = None,
    ) -> None:
        self.sessions = sessions
        self.servers = servers
        self.box = box
        self.clock = clock
        self.http = http
        self.providers = providers
        self.public_base_url = public_base_url.rstrip("/")
        self.mailer = mailer
        # Hears "ok", "refused" or "unavailable" after every token endpoint request (metrics).
        self.on_token_request: Callable[[str], None] | None = None

    def _count(self, result: str) -> None:
        if self.on_token_request is not None:
            self.on_token_request(result)

    # ---- configuration -----------------------------------------------------------------------

    def _auth(self, row: EmailServer) -> dict[str, Any]:
        auth: dict[str, Any] = row.config.get("authentication", {})
        if auth.get("method") != "oauth2":
            raise Conflict(f"e-mail server {row.name!r} does not use OAuth2")
        return auth

    def endpoints(self, row: EmailServer) -> Endpoints:
        auth = self._auth(row)
        return endpoints_for(
            self.providers,
            provider=auth["provider"],
            grant=auth["grant"],
            directory_tenant_id=auth.get("directory_tenant_id"),
            scope=auth.get("scope"),
            authorize_url=auth.get("authorize_url"),
            token_url=auth.get("token_url"),
        )

    def _client_secret(self, row: EmailServer) -> str:
        secret = self.servers.secrets_of(row).client_secret
        if not secret:
            raise NeedsAuthorization(f"e-mail server {row.name!r} has no client secret")
        return secret

    # ---- authorization code grant --------------------------------------------------------------

    def begin_authorization(self, db: Session, row: EmailServer) -> str:
        """A fresh authorization URL with single-use ``state`` and PKCE S256 (RFC 7636)."""
        auth = self._auth(row)
        if auth.get("grant") != "authorization_code":
            raise Conflict(
                "this configuration uses the client credentials grant: it needs no "
                "authorization, tokens come straight from the token endpoint"
            )
        now = self.clock()
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters, within RFC 7636's 43..128
        redirect_uri = auth["redirect_uri"]
        url = self.http.authorization_url(
            self.endpoints(row),
            client_id=auth["client_id"],
            redirect_uri=redirect_uri,
            state=state,
            code_verifier=verifier,
        )
        digest = _state_hash(state)
        db.add(
            OAuth2Authorization(
                state_hash=digest,
                tenant_id=row.tenant_id,
                server_id=row.id,
                code_verifier_enc=self.box.encrypt(verifier.encode(), f"oauth2-state:{digest}"),
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
        return url

    def complete_authorization(
        self,
        db: Session,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        error_description: str | None,
    ) -> CallbackResult:
        """The redirect target. An unknown, used or expired ``state`` raises ``BadRequest``
        before anything is written; otherwise the state is spent whatever the outcome."""
        now = self.clock()
        if not state:
            raise BadRequest("the OAuth2 callback has no state parameter")
        pending = db.scalar(
            select(OAuth2Authorization)
            .where(OAuth2Authorization.state_hash == _state_hash(state))
            .with_for_update()
        )
        if pending is None or pending.used_at is not None:
            raise BadRequest("unknown or already used OAuth2 state; start the authorization again")
        if pending.expires_at <= now:
            raise BadRequest("this OAuth2 authorization expired (10 minutes); start it again")
        row = db.get(EmailServer, pending.server_id, with_for_update=True)
        if row is None or row.tenant_id != pending.tenant_id:
            raise BadRequest("the e-mail server of this authorization no longer exists")
        tenant = db.get(Tenant, row.tenant_id) if row.tenant_id is not None else None
        tenant_name = tenant.name if tenant else ""
        pending.used_at = now

        def result(ok: bool, message: str) -> CallbackResult:
            return CallbackResult(tenant_name, row.name, ok, message)

        if error:
            # RFC 6749 section 4.1.2.1: the provider reports refusals to the redirect URI.
            row.oauth2_last_error = f"{error}: {error_description or ''}".strip(": ")
            return result(False, f"the provider refused: {error_description or error}")
        if not code:
            return result(False, "the provider sent neither a code nor an error")
        auth = self._auth(row)
        verifier = self.box.decrypt(pending.code_verifier_enc, f"oauth2-state:{pending.state_hash}")
        try:
            tokens = self.http.exchange_code(
                self.endpoints(row),
                client_id=auth["client_id"],
                client_secret=self._client_secret(row),
                redirect_uri=pending.redirect_uri,
                code=code,
                code_verifier=verifier.decode(),
                now=now,
            )
        except (TokenRefused, EndpointUnreachable, NeedsAuthorization) as exc:
            if not isinstance(exc, NeedsAuthorization):
                self._count("refused" if isinstance(exc, TokenRefused) else "unavailable")
            text = exc.description if isinstance(exc, TokenRefused) else str(exc)
            row.oauth2_last_error = str(exc)
            return result(False, f"the code exchange failed: {text}")
        if tokens.refresh_token is None:
            row.oauth2_last_error = "the provider returned no refresh token"
            return result(
                False,
                "the provider returned no refresh token (Microsoft: add the offline_access "
                "scope; Google: access_type=offline and prompt=consent)",
            )
        self._count("ok")
        self._store(row, tokens, now, previous={})
        log.info("oauth2: server %s authorized", row.id)
        return result(True, "authorized: mail is sent with XOAUTH2 from now on")

    def forget(self, db: Session, row: EmailServer) -> None:
        """Forget the tokens (DELETE .../oauth2). The consent at the provider stays."""
        self._auth(row)
        db.refresh(row, with_for_update=True)
        self.servers.store_tokens(row, {})
        row.oauth2_state = OAuth2State.NOT_AUTHORIZED.value
        row.access_token_expires_at = None
        row.refresh_token_last_used_at = None
        row.oauth2_last_error = None
        row.oauth2_warning = None
        row.oauth2_retry_at = None
        row.updated_at = self.clock()

    def ui_redirect(self, result: CallbackResult) -> str:
        """Where the browser goes after the callback (the server's page in the web UI)."""
        outcome = {"oauth2": "ok" if result.ok else "error", "message": result.message}
        if not result.tenant:  # the system e-mail server
            return f"/ui/system-email-server?{urlencode(outcome)}"
        query = urlencode({"tenant": result.tenant, **outcome})
        return f"/ui/email-servers/{quote(result.server, safe='')}?{query}"

    # ---- tokens ------------------------------------------------------------------------------

    def access_token(
        self, server_id: int, *, force_refresh: bool = False, rejected: str | None = None
    ) -> str:
        """A usable access token for the configuration, refreshing when it is due.

        ``force_refresh`` (the SMTP server refused the token): refresh, unless the stored
        token already differs from ``rejected`` - another process refreshed meanwhile.
        Raises ``NeedsAuthorization`` or ``TokenEndpointDown``; the message waits either way.
        """
        return self.access_token_info(
            server_id, force_refresh=force_refresh, rejected=rejected
        ).token

    def access_token_info(
        self, server_id: int, *, force_refresh: bool = False, rejected: str | None = None
    ) -> TokenInfo:
        """``access_token`` with how it was obtained (for the test's transcript)."""
        now = self.clock()
        with self.sessions() as db:
            row = db.get(EmailServer, server_id)
            if row is None:
                raise NeedsAuthorization("the e-mail server no longer exists")
            self._auth(row)
            self._check_usable(row)
            tokens = self.servers.tokens_of(row)
            current = tokens.get("access_token")
            if (
                current
                and not needs_refresh(row.access_token_expires_at, now)
                and not (force_refresh and (rejected is None or rejected == current))
            ):
                return TokenInfo(str(current), False, row.access_token_expires_at)

        def due(row: EmailServer, tokens: dict[str, Any], now: datetime) -> bool:
            current = tokens.get("access_token")
            if not current or needs_refresh(row.access_token_expires_at, now):
                return True
            return force_refresh and (rejected is None or rejected == current)

        return self._refresh_locked(server_id, due, honour_backoff=True)

    def refresh_now(self, server_id: int) -> None:
        """Refresh now whatever the token's age (the API's POST .../oauth2/refresh)."""
        self._refresh_locked(server_id, lambda _r, _t, _n: True, honour_backoff=False)

    def keep_alive_once(self) -> int:
        """One round of the token keeper; returns how many configurations it refreshed.

        Refreshes authorization-code configurations whose refresh token was not used for
        ``KEEPALIVE_AFTER`` (so an idle configuration does not lapse) and those whose backoff
        after a failed refresh is over.
        """
        now = self.clock()
        with self.sessions() as db:
            candidates = [
                row.id
                for row in db.scalars(
                    select(EmailServer).where(
                        EmailServer.oauth2_state == OAuth2State.AUTHORIZED.value
                    )
                )
                if self._keeper_due(row, now)
            ]
        done = 0
        for server_id in candidates:

            def due(row: EmailServer, _tokens: dict[str, Any], now: datetime) -> bool:
                return row.oauth2_state == OAuth2State.AUTHORIZED.value and self._keeper_due(
                    row, now
                )

            try:
                if self._refresh_locked(server_id, due, honour_backoff=True).refreshed:
                    done += 1
            except (NeedsAuthorization, TokenEndpointDown) as exc:
                log.warning("oauth2 keeper: server %s: %s", server_id, exc.title)
        return done

    @staticmethod
    def _keeper_due(row: EmailServer, now: datetime) -> bool:
        auth = row.config.get("authentication", {})
        if auth.get("method") != "oauth2" or auth.get("grant") != "authorization_code":
            return False
        if row.oauth2_retry_at is not None:
            return row.oauth2_retry_at <= now
        last = row.refresh_token_last_used_at
        return last is None or last + KEEPALIVE_AFTER <= now

    def _check_usable(self, row: EmailServer) -> None:
        state = row.oauth2_state or OAuth2State.NOT_AUTHORIZED.value
        auth = row.config.get("authentication", {})
        if state == OAuth2State.NEEDS_REAUTHORIZATION.value:
            raise NeedsAuthorization(
                f"e-mail server {row.name!r} needs OAuth2 re-authorization: "
                f"{row.oauth2_last_error or 'the grant is no longer valid'}"
            )
        if state == OAuth2State.ERROR.value:
            raise NeedsAuthorization(
                f"e-mail server {row.name!r}: OAuth2 error: {row.oauth2_last_error}"
            )
        if state == OAuth2State.NOT_AUTHORIZED.value and auth.get("grant") != "client_credentials":
            raise NeedsAuthorization(f"e-mail server {row.name!r} is not authorized yet")

    def _refresh_locked(
        self,
        server_id: int,
        due: Callable[[EmailServer, dict[str, Any], datetime], bool],
        *,
        honour_backoff: bool,
    ) -> TokenInfo:
        outcome = self._refresh_in_transaction(server_id, due, honour_backoff)
        if outcome.notify is not None:
            self._notify_admins(*outcome.notify)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.token is not None
        return outcome.token

    def _refresh_in_transaction(
        self,
        server_id: int,
        due: Callable[[EmailServer, dict[str, Any], datetime], bool],
        honour_backoff: bool,
    ) -> _Outcome:
        with self.sessions() as db, db.begin():
            row = db.scalar(
                select(EmailServer).where(EmailServer.id == server_id).with_for_update()
            )
            if row is None:
                return _Outcome(error=NeedsAuthorization("the e-mail server no longer exists"))
            now = self.clock()
            auth = self._auth(row)
            try:
                self._check_usable(row)
            except NeedsAuthorization as exc:
                return _Outcome(error=exc)
            tokens = self.servers.tokens_of(row)
            if not due(row, tokens, now):
                current = str(tokens.get("access_token", ""))
                return _Outcome(token=TokenInfo(current, False, row.access_token_expires_at))
            if honour_backoff and row.oauth2_retry_at is not None and row.oauth2_retry_at > now:
                return _Outcome(
                    error=TokenEndpointDown(
                        f"token endpoint failed recently: {row.oauth2_last_error}; "
                        f"next try at {row.oauth2_retry_at:%H:%M:%S}",
                        row.oauth2_retry_at,
                    )
                )
            app_only = auth.get("grant") == "client_credentials"
            try:
                secret = self._client_secret(row)
                if app_only:
                    fresh = self.http.client_credentials(
                        self.endpoints(row),
                        client_id=auth["client_id"],
                        client_secret=secret,
                        now=now,
                    )
                else:
                    refresh_token = tokens.get("refresh_token")
                    if not refresh_token:
                        raise TokenRefused("invalid_grant", "no refresh token is stored", None)
                    fresh = self.http.refresh(
                        self.endpoints(row),
                        client_id=auth["client_id"],
                        client_secret=secret,
                        refresh_token=str(refresh_token),
                        now=now,
                    )
            except TokenRefused as exc:
                self._count("refused")
                return self._refused(row, exc, app_only)
            except NeedsAuthorization as exc:
                return _Outcome(error=exc)
            except EndpointUnreachable as exc:
                self._count("unavailable")
                return self._unreachable(row, tokens, str(exc), now)
            self._count("ok")
            self._store(row, fresh, now, previous=tokens, refresh_used=not app_only)
            return _Outcome(token=TokenInfo(fresh.access_token, True, fresh.expires_at))

    def _refused(self, row: EmailServer, exc: TokenRefused, app_only: bool) -> _Outcome:
        kind = classify_refusal(exc.error)
        if kind is Refusal.TEMPORARY:
            return self._unreachable(row, self.servers.tokens_of(row), str(exc), self.clock())
        before = row.oauth2_state
        if kind is Refusal.REAUTHORIZE and not app_only:
            row.oauth2_state = OAuth2State.NEEDS_REAUTHORIZATION.value
        else:
            row.oauth2_state = OAuth2State.ERROR.value
        row.oauth2_last_error = f"{exc.error}: {exc.description}"
        if _EXPIRED_SECRET_CODE in exc.description:
            row.oauth2_warning = "the client secret has expired: create a new one at the provider"
        row.oauth2_retry_at = None
        row.updated_at = self.clock()
        log.warning("oauth2: server %s refused by the token endpoint: %s", row.id, exc.error)
        notify = None
        if before != row.oauth2_state and row.tenant_id is not None:
            notify = (row.tenant_id, row.name, row.oauth2_last_error)
        return _Outcome(
            error=NeedsAuthorization(
                f"e-mail server {row.name!r}: the token endpoint refused: {exc.description}"
            ),
            notify=notify,
        )

    def _unreachable(
        self, row: EmailServer, tokens: dict[str, Any], text: str, now: datetime
    ) -> _Outcome:
        failures = int(tokens.get("failures", 0)) + 1
        self.servers.store_tokens(row, {**tokens, "failures": failures})
        row.oauth2_retry_at = now + backoff(failures)
        row.oauth2_last_error = text
        log.warning("oauth2: server %s: token endpoint failure %d: %s", row.id, failures, text)
        return _Outcome(error=TokenEndpointDown(text, row.oauth2_retry_at))

    def _store(
        self,
        row: EmailServer,
        fresh: TokenSet,
        now: datetime,
        *,
        previous: dict[str, Any],
        refresh_used: bool = True,
    ) -> None:
        # Rotation: keep the refresh token the provider just returned; the old one may be
        # dead already (Microsoft identity platform "Refresh tokens"; RFC 9700 4.14.2).
        tokens: dict[str, Any] = {
            "access_token": fresh.access_token,
            "obtained_at": now.isoformat(),
        }
        refresh = fresh.refresh_token or previous.get("refresh_token")
        if refresh:
            tokens["refresh_token"] = refresh
        if fresh.scope:
            tokens["scope"] = fresh.scope
        self.servers.store_tokens(row, tokens)
        row.oauth2_state = OAuth2State.AUTHORIZED.value
        row.access_token_expires_at = fresh.expires_at
        if refresh_used:
            row.refresh_token_last_used_at = now
        row.oauth2_last_error = None
        row.oauth2_retry_at = None
        row.oauth2_warning = secret_warning(fresh.client_secret_expires_at, now)
        row.updated_at = now

    # ---- notifications -----------------------------------------------------------------------

    def _notify_admins(self, tenant_id: int, server_name: str, reason: str) -> None:
        """One mail to every admin of the tenant, through the system e-mail server."""
        with self.sessions() as db:
            tenant = db.get(Tenant, tenant_id)
            admins = list(
                db.scalars(
                    select(User.email)
                    .join(Membership, Membership.user_id == User.id)
                    .where(
                        Membership.tenant_id == tenant_id,
                        Membership.role == Role.ADMIN.value,
                        User.email.is_not(None),
                    )
                    .order_by(User.username)
                )
            )
        if tenant is None or not admins:
            log.warning("oauth2: no tenant admin with an e-mail address to notify")
            return
        if self.mailer is None:
            log.warning("oauth2: no system mailer: %d admin(s) not notified", len(admins))
            return
        link = (
            f"{self.public_base_url}/ui/email-servers/{quote(server_name, safe='')}"
            f"?tenant={quote(tenant.name)}"
        )
        subject = f"mailgate: e-mail server {server_name} of {tenant.name} needs attention"
        text = (
            f"The OAuth2 authorization of the e-mail server {server_name!r} in tenant "
            f"{tenant.name!r} no longer works:\n\n    {reason}\n\n"
            "Mail for this server waits in the queue; nothing is lost. Open the server's "
            f"page and authorize it again:\n\n    {link}\n"
        )
        for address in admins:
            try:
                self.mailer.send_system_mail(str(address), subject, text)
            except Exception as exc:  # the refusal is recorded; mail must not break it
                log.warning("oauth2: notifying an admin failed: %s", type(exc).__name__)


class OAuth2TokenProvider:
    """The transport's token provider for one configuration (XOAUTH2).

    Remembers the token it handed out, so that a forced refresh after an SMTP ``535`` does
    not refresh again when another process already replaced that token. ``note``, when set
    (the server test sets the transcript's), hears how each token was obtained.
    """

    def __init__(self, service: OAuth2Service, server_id: int) -> None:
        self.service = service
        self.server_id = server_id
        self.note: Callable[[str], None] | None = None
        self._last: str | None = None

    def token(self, *, force_refresh: bool = False) -> str:
        why = " after the SMTP server refused the token" if force_refresh else ""
        try:
            info = self.service.access_token_info(
                self.server_id, force_refresh=force_refresh, rejected=self._last
            )
        except TokenUnavailable as exc:
            self._say(f"OAuth2: no access token{why}: {exc.detail}")
            raise
        until = f", valid until {isoformat(info.expires_at)}" if info.expires_at else ""
        how = "fetched from the token endpoint" if info.refreshed else "reused (still valid)"
        self._say(f"OAuth2: access token {how}{why}{until}")
        self._last = info.token
        return info.token

    def _say(self, text: str) -> None:
        if self.note is not None:
            self.note(text)

    async def access_token(self, *, force_refresh: bool = False) -> str:
        # The database and Authlib's client are synchronous: keep them off the event loop.
        return await asyncio.to_thread(self.token, force_refresh=force_refresh)


def oauth2_hint(auth: dict[str, Any], kind: str | None) -> str | None:
    """Advice for an OAuth2 configuration that the generic SMTP hints cannot give."""
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
