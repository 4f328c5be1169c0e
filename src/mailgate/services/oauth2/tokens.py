"""OAuth2 access tokens of e-mail servers: reuse, refresh with rotation, client credentials.

Tokens live encrypted in ``email_servers.tokens_enc`` (``EmailServers.store_tokens``); the
``oauth2_*`` columns are their readable status. Every refresh of one configuration runs under
a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serializes
writers), and re-reads the row once it holds the lock, so two processes never spend one
refresh token twice: the second finds the fresh token the first stored.

A refusal that breaks the configuration is recorded with its notices (``alerts``) in the same
transaction; sending them is the alerts' job, not this module's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.tables import EmailServer
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import Conflict
from mailgate.domain.oauth2 import (
    REFRESH_CLAIM,
    EndpointUnreachable,
    NeedsAuthorization,
    OAuth2State,
    Refusal,
    TokenEndpointDown,
    TokenRefused,
    TokenSet,
    TokenUnavailable,
    backoff,
    classify_refusal,
    needs_refresh,
    secret_warning,
)
from mailgate.domain.oauth2_providers import (
    EXPIRED_SECRET_CODE,
    Endpoints,
    ProviderSettings,
    endpoints_for,
)
from mailgate.ports import TokenEndpoint
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.email_servers import EmailServers
from mailgate.services.oauth2.alerts import OAuth2Alerts, record_incident

log = logging.getLogger("mailgate.oauth2")

TokenRequestCounter = Callable[[str], None]
"""Hears "ok", "refused" or "unavailable" after every token endpoint request (metrics)."""

RefreshDue = Callable[[EmailServer, dict[str, Any], datetime], bool]
"""Whether a configuration needs a new token, asked again under its row lock."""


@dataclass(frozen=True)
class TokenInfo:
    token: str
    refreshed: bool
    expires_at: datetime | None


@dataclass(frozen=True)
class _Outcome:
    token: TokenInfo | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class _Busy:
    """Another process holds the refresh claim."""


@dataclass(frozen=True)
class _Claimed:
    """This caller holds the refresh claim: what the token request needs."""

    claim_id: str
    endpoints: Endpoints
    client_id: str
    client_secret: str
    refresh_token: str | None
    """``None``: the client credentials grant."""
    now: datetime


def _claim_until(claim: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(claim.get("until")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


# ---- a configuration's OAuth2 settings (shared with the authorization flow) ------------------


def oauth2_settings(row: EmailServer) -> dict[str, Any]:
    auth: dict[str, Any] = row.config.get("authentication", {})
    if auth.get("method") != "oauth2":
        raise Conflict(f"e-mail server {row.name!r} does not use OAuth2")
    return auth


def endpoints_of(providers: ProviderSettings, row: EmailServer) -> Endpoints:
    auth = oauth2_settings(row)
    return endpoints_for(
        providers,
        provider=auth["provider"],
        grant=auth["grant"],
        directory_tenant_id=auth.get("directory_tenant_id"),
        scope=auth.get("scope"),
        authorize_url=auth.get("authorize_url"),
        token_url=auth.get("token_url"),
        transport=str(row.config.get("transport") or "smtp"),
    )


def client_secret_of(servers: EmailServers, row: EmailServer) -> str:
    secret = servers.secrets_of(row).client_secret
    if not secret:
        raise NeedsAuthorization(f"e-mail server {row.name!r} has no client secret")
    return secret


def store_token_set(
    servers: EmailServers,
    row: EmailServer,
    fresh: TokenSet,
    now: datetime,
    *,
    previous: dict[str, Any],
    refresh_used: bool = True,
) -> None:
    """Keep a token set on the row and mark the configuration authorized."""
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
    servers.store_tokens(row, tokens)
    row.oauth2_state = OAuth2State.AUTHORIZED.value
    row.access_token_expires_at = fresh.expires_at
    if refresh_used:
        row.refresh_token_last_used_at = now
    row.oauth2_last_error = None
    row.oauth2_retry_at = None
    row.oauth2_warning = secret_warning(fresh.client_secret_expires_at, now)
    row.updated_at = now


def check_usable(row: EmailServer) -> None:
    """Raise ``NeedsAuthorization`` when only an administrator can make the row work."""
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


# ---- the token service -----------------------------------------------------------------------


class OAuth2Tokens:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        servers: EmailServers,
        endpoint: TokenEndpoint,
        providers: ProviderSettings,
        clock: Clock,
        on_token_request: TokenRequestCounter | None = None,
        request_deadline_s: float = 30.0,
    ) -> None:
        """``request_deadline_s``: the token endpoint client's total deadline per request;
        a refresh claim outlives it, so a claim never ends while its request runs."""
        self.sessions = sessions
        self.servers = servers
        self.endpoint = endpoint
        self.providers = providers
        self.clock = clock
        self.on_token_request = on_token_request
        self.claim_s = request_deadline_s + 30
        self.claim_poll_s = 0.1
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="oauth2-token")
        """Token requests of transports (``OAuth2TokenProvider.access_token``): not the event
        loop's default executor, which the delivery worker's database calls use."""
        self._async_locks: dict[tuple[int, int], asyncio.Lock] = {}

    def async_lock(self, server_id: int) -> asyncio.Lock:
        """One token request at a time per configuration on this event loop."""
        key = (id(asyncio.get_running_loop()), server_id)
        lock = self._async_locks.get(key)
        if lock is None:
            if len(self._async_locks) > 10_000:  # loops of tests and restarts come and go
                self._async_locks.clear()
            lock = self._async_locks[key] = asyncio.Lock()
        return lock

    def _count(self, result: str) -> None:
        if self.on_token_request is not None:
            self.on_token_request(result)

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
            oauth2_settings(row)
            check_usable(row)
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

        return self.refresh_locked(server_id, due, honour_backoff=True)

    def refresh_now(self, server_id: int) -> None:
        """Refresh now whatever the token's age (the API's POST .../oauth2/refresh)."""
        self.refresh_locked(server_id, lambda _r, _t, _n: True, honour_backoff=False)

    def refresh_locked(self, server_id: int, due: RefreshDue, *, honour_backoff: bool) -> TokenInfo:
        """Refresh if ``due`` still says so (asked under the row lock), else hand out the
        stored token. ``honour_backoff``: within the wait after a failure, raise without a
        request.

        The token request runs outside any database transaction (on SQLite a transaction
        holds the one write lock: a slow token endpoint would stop every tenant). Instead
        the refresh is claimed in a short transaction (``REFRESH_CLAIM`` among the tokens,
        good for ``claim_s``), the request runs with its total deadline, and a second short
        transaction stores the answer if the claim still stands. Other processes wait for
        the claim and then find the fresh token, so a refresh token is never spent twice; in
        this process a lock per configuration does the same without polling."""
        with self._local_lock(server_id):
            while True:
                step = self._claim(server_id, due, honour_backoff)
                if not isinstance(step, _Busy):
                    break
                time.sleep(self.claim_poll_s)  # another process is refreshing: wait for it
            if isinstance(step, _Claimed):
                step = self._exchange(server_id, step)
        if step.error is not None:
            raise step.error
        assert step.token is not None
        return step.token

    def _local_lock(self, server_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(server_id, threading.Lock())

    def _claim(
        self, server_id: int, due: RefreshDue, honour_backoff: bool
    ) -> _Outcome | _Busy | _Claimed:
        with self.sessions() as db, db.begin():
            row = db.scalar(
                select(EmailServer).where(EmailServer.id == server_id).with_for_update()
            )
            if row is None:
                return _Outcome(error=NeedsAuthorization("the e-mail server no longer exists"))
            now = self.clock()
            auth = oauth2_settings(row)
            try:
                check_usable(row)
            except NeedsAuthorization as exc:
                return _Outcome(error=exc)
            tokens = self.servers.tokens_of(row)
            claim = tokens.pop(REFRESH_CLAIM, None)
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
            wall = datetime.now(UTC)  # a lease between processes: real time, not the clock
            if isinstance(claim, dict) and _claim_until(claim) > wall:
                return _Busy()
            app_only = auth.get("grant") == "client_credentials"
            try:
                secret = client_secret_of(self.servers, row)
            except NeedsAuthorization as exc:
                return _Outcome(error=exc)
            refresh_token = tokens.get("refresh_token")
            if not app_only and not refresh_token:
                self._count("refused")
                missing = TokenRefused("invalid_grant", "no refresh token is stored", None)
                return self._refused(db, row, missing, app_only)
            claim_id = uuid.uuid4().hex
            until = wall + timedelta(seconds=self.claim_s)
            self.servers.store_tokens(
                row, {**tokens, REFRESH_CLAIM: {"id": claim_id, "until": until.isoformat()}}
            )
            return _Claimed(
                claim_id=claim_id,
                endpoints=endpoints_of(self.providers, row),
                client_id=str(auth["client_id"]),
                client_secret=secret,
                refresh_token=None if app_only else str(refresh_token),
                now=now,
            )

    def _exchange(self, server_id: int, claimed: _Claimed) -> _Outcome:
        """The token request (no transaction open), then its answer stored under the claim."""
        answer: TokenSet | TokenRefused | EndpointUnreachable
        try:
            if claimed.refresh_token is None:
                answer = self.endpoint.client_credentials(
                    claimed.endpoints,
                    client_id=claimed.client_id,
                    client_secret=claimed.client_secret,
                    now=claimed.now,
                )
            else:
                answer = self.endpoint.refresh(
                    claimed.endpoints,
                    client_id=claimed.client_id,
                    client_secret=claimed.client_secret,
                    refresh_token=claimed.refresh_token,
                    now=claimed.now,
                )
        except (TokenRefused, EndpointUnreachable) as exc:
            answer = exc
        except Exception as exc:
            # A bug, or an answer nobody expected: this configuration's refresh failed,
            # nothing else (the keeper goes on with the others). Type only: texts may
            # carry secrets.
            log.error("oauth2: server %s: token request failed: %s", server_id, type(exc).__name__)
            answer = EndpointUnreachable(f"the token request failed ({type(exc).__name__})")
        with self.sessions() as db, db.begin():
            row = db.scalar(
                select(EmailServer).where(EmailServer.id == server_id).with_for_update()
            )
            if row is None:
                return _Outcome(error=NeedsAuthorization("the e-mail server no longer exists"))
            tokens = self.servers.tokens_of(row)
            claim = tokens.pop(REFRESH_CLAIM, None)
            if not isinstance(claim, dict) or claim.get("id") != claimed.claim_id:
                # The tokens were forgotten or replaced meanwhile (the configuration was
                # re-pointed, authorized again, or deleted its tokens): the answer is for
                # what it was then, so it is not kept.
                log.warning("oauth2: server %s changed during a token refresh", server_id)
                return _Outcome(
                    error=TokenEndpointDown(
                        "the configuration changed during the token refresh; try again",
                        self.clock(),
                    )
                )
            self.servers.store_tokens(row, tokens)
            now = self.clock()
            app_only = claimed.refresh_token is None
            if isinstance(answer, TokenRefused):
                self._count("refused")
                return self._refused(db, row, answer, app_only)
            if isinstance(answer, EndpointUnreachable):
                self._count("unavailable")
                return self._unreachable(row, tokens, str(answer), now)
            self._count("ok")
            store_token_set(
                self.servers, row, answer, now, previous=tokens, refresh_used=not app_only
            )
            return _Outcome(token=TokenInfo(answer.access_token, True, answer.expires_at))

    def _refused(
        self, db: Session, row: EmailServer, exc: TokenRefused, app_only: bool
    ) -> _Outcome:
        now = self.clock()
        kind = classify_refusal(exc.error)
        if kind is Refusal.TEMPORARY:
            return self._unreachable(row, self.servers.tokens_of(row), str(exc), now)
        before = row.oauth2_state
        if kind is Refusal.REAUTHORIZE and not app_only:
            row.oauth2_state = OAuth2State.NEEDS_REAUTHORIZATION.value
        else:
            row.oauth2_state = OAuth2State.ERROR.value
        row.oauth2_last_error = f"{exc.error}: {exc.description}"
        if EXPIRED_SECRET_CODE in exc.description:
            row.oauth2_warning = "the client secret has expired: create a new one at the provider"
        row.oauth2_retry_at = None
        row.updated_at = now
        log.warning("oauth2: server %s refused by the token endpoint: %s", row.id, exc.error)
        if before != row.oauth2_state:
            record_incident(db, row, row.oauth2_last_error, now)
        return _Outcome(
            error=NeedsAuthorization(
                f"e-mail server {row.name!r}: the token endpoint refused: {exc.description}"
            )
        )

    def token_rejected(self, server_id: int, detail: str) -> bool:
        """The mail API refused a freshly refreshed access token of a delegated grant (Graph
        or Gmail ``401``, or a token without the send scope): only signing in again helps.
        The configuration moves to ``needs_reauthorization`` (its mail waits, the admins
        are notified, as for a refused refresh). True when the state changed."""
        with self.sessions() as db, db.begin():
            row = db.scalar(
                select(EmailServer).where(EmailServer.id == server_id).with_for_update()
            )
            if row is None or oauth2_settings(row).get("grant") == "client_credentials":
                return False
            now = self.clock()
            before = row.oauth2_state
            row.oauth2_state = OAuth2State.NEEDS_REAUTHORIZATION.value
            row.oauth2_last_error = detail
            row.oauth2_retry_at = None
            row.updated_at = now
            log.warning("oauth2: server %s: the mail API refused its token", row.id)
            if before != row.oauth2_state:
                record_incident(db, row, detail, now)
            return before != row.oauth2_state

    def _unreachable(
        self, row: EmailServer, tokens: dict[str, Any], text: str, now: datetime
    ) -> _Outcome:
        failures = int(tokens.get("failures", 0)) + 1
        self.servers.store_tokens(row, {**tokens, "failures": failures})
        row.oauth2_retry_at = now + backoff(failures)
        row.oauth2_last_error = text
        log.warning("oauth2: server %s: token endpoint failure %d: %s", row.id, failures, text)
        return _Outcome(error=TokenEndpointDown(text, row.oauth2_retry_at))


# ---- the transport's view --------------------------------------------------------------------


class OAuth2TokenProvider:
    """The transport's token provider for one configuration (XOAUTH2), a ``ports.TokenProvider``.

    Remembers the token it handed out, so that a forced refresh after an SMTP ``535`` does
    not refresh again when another process already replaced that token. ``note``, when set
    (the server test sets the transcript's), hears how each token was obtained. With
    ``alerts``, the admins' notices of a refusal that broke the configuration go out at once
    (the keeper's round would send them within minutes otherwise).
    """

    def __init__(
        self, tokens: OAuth2Tokens, server_id: int, *, alerts: OAuth2Alerts | None = None
    ) -> None:
        self.tokens = tokens
        self.server_id = server_id
        self.alerts = alerts
        self.note: Callable[[str], None] | None = None
        self._last: str | None = None

    def token(self, *, force_refresh: bool = False) -> str:
        why = " after the mail server refused the token" if force_refresh else ""
        try:
            info = self.tokens.access_token_info(
                self.server_id, force_refresh=force_refresh, rejected=self._last
            )
        except TokenUnavailable as exc:
            self._say(f"OAuth2: no access token{why}: {exc.detail}")
            if isinstance(exc, NeedsAuthorization):
                self._send_alerts()
            raise
        until = f", valid until {isoformat(info.expires_at)}" if info.expires_at else ""
        how = "fetched from the token endpoint" if info.refreshed else "reused (still valid)"
        self._say(f"OAuth2: access token {how}{why}{until}")
        self._last = info.token
        return info.token

    def _send_alerts(self) -> None:
        if self.alerts is None:
            return
        try:
            self.alerts.send_due()
        except Exception as exc:  # the keeper tries again; the token error is what counts here
            log.warning("oauth2: sending notices failed: %s", type(exc).__name__)

    def _say(self, text: str) -> None:
        if self.note is not None:
            self.note(text)

    async def access_token(self, *, force_refresh: bool = False) -> str:
        # The database and Authlib's client are synchronous: keep them off the event loop, on
        # threads of their own, one at a time per configuration. On the loop's default
        # executor a tenant's slow token endpoint held a thread per connection it tried to
        # open, and the worker's database calls, every tenant's, waited for threads.
        async with self.tokens.async_lock(self.server_id):
            loop = asyncio.get_running_loop()
            call = functools.partial(self.token, force_refresh=force_refresh)
            return await loop.run_in_executor(self.tokens.executor, call)


def token_providers(
    tokens: OAuth2Tokens, alerts: OAuth2Alerts | None = None
) -> Callable[[ResolvedServer], OAuth2TokenProvider | None]:
    """``token_provider_for``: the provider of an OAuth2 configuration, ``None`` for others.
    Call a provider outside any open database transaction: a refresh takes the row lock."""

    def provider_for(server: ResolvedServer) -> OAuth2TokenProvider | None:
        if server.config.authentication.method != "oauth2":
            return None
        return OAuth2TokenProvider(tokens, server.id, alerts=alerts)

    return provider_for
