"""Authorized requests to an HTTP mail API: a total deadline on each, one token refresh on
``401``, at most N requests at once per mailbox, and a mailbox's throttle window.

::

    Exception
     └── ApiError        the API (or the way to it) failed a step; ``result()`` is the
                         domain's ``AttemptResult``, ``failure`` the diagnosis' ``Failure``
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import weakref
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from mailgate.adapters.http_api.transcript import HttpTranscript
from mailgate.adapters.outbound import denied_reason
from mailgate.adapters.smtp.errors import find_cause
from mailgate.adapters.smtp.tls import describe_ssl_error
from mailgate.domain.clock import Clock
from mailgate.domain.errors import MailgateError
from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.domain.pauses import PauseSignal, classify_http
from mailgate.domain.transport import Failure, FailureKind, Reply
from mailgate.ports import TokenProvider

# Microsoft identity platform errors name themselves "AADSTS<digits>: ..." in the
# description; the code is what the hints (and Microsoft's error lookup) go by.
_AADSTS = re.compile(r"\bAADSTS\d+\b")


class ApiError(Exception):
    """A step of an API transport failed, classified once (cf. ``smtp.errors``).

    ``rejected``: the API refused a freshly refreshed token (or its scope): an authorization
    problem of the configuration, not of this message.
    """

    def __init__(
        self,
        outcome: Outcome,
        step: str,
        detail: str,
        *,
        kind: FailureKind = FailureKind.REPLY,
        reply: Reply | None = None,
        retry_after_s: float | None = None,
        rejected: bool = False,
        pause: PauseSignal | None = None,
    ) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.step = step
        self.detail = detail
        self.kind = kind
        self.reply = reply
        self.retry_after_s = retry_after_s
        self.rejected = rejected
        self.pause = pause

    @property
    def failure(self) -> Failure:
        return Failure(self.step, self.kind, self.reply, self.detail)

    def result(self, ms: int) -> AttemptResult:
        code = self.reply.code if self.reply is not None else None
        return AttemptResult(
            self.outcome,
            code,
            self.detail,
            ms,
            step=self.step,
            retry_after_s=self.retry_after_s,
            pause=self.pause,
        )


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3): delay-seconds or an HTTP-date; ``None`` if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def aadsts_code(text: str) -> str | None:
    found = _AADSTS.search(text)
    return found.group(0) if found else None


def translate(step: str, exc: BaseException, *, where: str, limit_s: float) -> ApiError:
    """An httpx, ssl or socket exception as a temporary ``ApiError`` of its kind."""
    if (reason := denied_reason(exc)) is not None:
        return ApiError(
            Outcome.TEMPORARY,
            step,
            f"not connecting: {reason}",
            kind=FailureKind.DESTINATION_DENIED,
        )
    ssl_err = find_cause(exc, ssl.SSLError)
    if isinstance(ssl_err, ssl.SSLError):
        kind, detail = describe_ssl_error(ssl_err)
        return ApiError(Outcome.TEMPORARY, step, f"{where}: {detail}", kind=kind)
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return ApiError(
            Outcome.TEMPORARY,
            step,
            f"no answer from {where} within {limit_s:g} s",
            kind=FailureKind.TIMEOUT,
        )
    if find_cause(exc, ConnectionRefusedError):
        return ApiError(
            Outcome.TEMPORARY, step, f"connection refused by {where}", kind=FailureKind.REFUSED
        )
    text = str(exc) or type(exc).__name__
    if "Name or service not known" in text or "nodename nor servname" in text:
        return ApiError(
            Outcome.TEMPORARY, step, f"{where} does not resolve: {text}", kind=FailureKind.DNS
        )
    if isinstance(exc, httpx.RemoteProtocolError):
        return ApiError(
            Outcome.TEMPORARY,
            step,
            f"{where} closed the connection: {text}",
            kind=FailureKind.DISCONNECTED,
        )
    return ApiError(Outcome.TEMPORARY, step, f"{where}: {text}", kind=FailureKind.NETWORK)


# ---- per mailbox: how many requests at once, and how long to keep away -------------------------


class MailboxGates:
    """At most ``limit`` requests in flight per mailbox in this process, and a throttle window
    per mailbox after the API said ``Retry-After``.

    Graph allows 4 concurrent requests per app and mailbox (Microsoft Graph throttling
    limits, Outlook service); the dispatcher may run more sessions than that (up to
    ``limits.max_connections``) and several configurations, and the server test, may share a
    mailbox. Semaphores belong to an event loop, so each loop has its own; the throttle
    window (a time on the injected clock) is shared by all of them.
    """

    def __init__(self, clock: Clock, limit: int | None) -> None:
        self.clock = clock
        self.limit = limit
        self._semaphores: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()
        self._blocked: dict[str, datetime] = {}

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        if self.limit is None:
            yield
            return
        loop = asyncio.get_running_loop()
        semaphores = self._semaphores.setdefault(loop, {})
        semaphore = semaphores.setdefault(key, asyncio.Semaphore(self.limit))
        async with semaphore:
            yield

    def blocked_for(self, key: str) -> float:
        """Seconds the mailbox is still kept away from (0: not throttled)."""
        until = self._blocked.get(key)
        if until is None:
            return 0.0
        left = (until - self.clock()).total_seconds()
        if left <= 0:
            self._blocked.pop(key, None)
            return 0.0
        return left

    def block(self, key: str, seconds: float) -> None:
        until = self.clock() + timedelta(seconds=seconds)
        if until > self._blocked.get(key, until - timedelta(seconds=1)):
            self._blocked[key] = until


# ---- one configuration's authorized requests ---------------------------------------------------

THROTTLE_STATUSES = (429, 503, 504)
# A token fetched this recently is used without asking the provider again (it is handed out
# only while valid for 5 more minutes: domain/oauth2.EXPIRY_MARGIN).
_TOKEN_REUSE_S = 60.0


class ApiCall:
    """The requests of one delivery session or server test to one API, as one mailbox."""

    def __init__(
        self,
        *,
        api: str,
        client: httpx.AsyncClient,
        tokens: TokenProvider | None,
        gates: MailboxGates,
        mailbox_key: str,
        limit_s: float,
        transcript: HttpTranscript,
    ) -> None:
        self.api = api
        self.client = client
        self.tokens = tokens
        self.gates = gates
        self.key = mailbox_key
        self.limit_s = limit_s
        self.transcript = transcript
        self._token: str | None = None
        self._token_at = 0.0

    async def token(self, *, force_refresh: bool = False, step: str = "token") -> str:
        """The access token (reused for a minute); ``ApiError`` at ``step`` when none."""
        if (
            self._token is not None
            and not force_refresh
            and time.monotonic() - self._token_at < _TOKEN_REUSE_S
        ):
            return self._token
        if self.tokens is None:
            raise ApiError(
                Outcome.TEMPORARY,
                step,
                "no OAuth2 access token: the configuration has not been authorized",
                kind=FailureKind.NO_TOKEN_PROVIDER,
            )
        try:
            token = await asyncio.wait_for(
                self.tokens.access_token(force_refresh=force_refresh), self.limit_s
            )
        except MailgateError as exc:
            raise ApiError(
                Outcome.TEMPORARY,
                step,
                f"could not get an OAuth2 access token: {exc.detail}",
                kind=FailureKind.OAUTH2_TOKEN,
                reply=Reply(None, aadsts_code(exc.detail), exc.detail),
            ) from exc
        except TimeoutError as exc:
            raise ApiError(
                Outcome.TEMPORARY,
                step,
                f"no OAuth2 access token within {self.limit_s:g} s",
                kind=FailureKind.OAUTH2_TOKEN,
            ) from exc
        except Exception as exc:  # a token provider's own failure: its type, never its text
            raise ApiError(
                Outcome.TEMPORARY,
                step,
                f"could not get an OAuth2 access token ({type(exc).__name__})",
                kind=FailureKind.OAUTH2_TOKEN,
            ) from exc
        self.transcript.add_secret(token)
        self._token, self._token_at = token, time.monotonic()
        return token

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        authorized: bool = True,
        step: str = "send",
        cleanup: bool = False,
    ) -> httpx.Response:
        """One request; a ``401`` gets one fresh token and one more try (then the answer is
        the caller's to classify). Raises ``ApiError`` for the way there (network, TLS,
        deadline) and while the mailbox is in a throttle window - except for ``cleanup``
        (removing what a failed send left behind, right after the failure)."""
        for attempt in (0, 1):
            sent = dict(headers or {})
            if authorized:
                sent["Authorization"] = "Bearer " + await self.token(
                    force_refresh=attempt == 1, step=step
                )
            response = await self._send(method, url, content, json, sent, step, cleanup)
            if response.status_code == 401 and authorized and attempt == 0:
                self.transcript.note(f"{self.api} refused the access token: refreshing it once")
                continue
            return response
        raise AssertionError("unreachable")

    def retry_after(self, response: httpx.Response) -> float | None:
        """The answer's ``Retry-After`` in seconds from now, if it has one."""
        return retry_after_s(response.headers.get("retry-after"), self.gates.clock())

    async def _send(
        self,
        method: str,
        url: str,
        content: bytes | None,
        json: Any,
        headers: dict[str, str],
        step: str,
        cleanup: bool,
    ) -> httpx.Response:
        where = urlsplit(url).netloc or url
        waiting = 0.0 if cleanup else self.gates.blocked_for(self.key)
        if waiting > 0:
            raise ApiError(
                Outcome.TEMPORARY,
                step,
                f"{self.api} asked to wait {waiting:.0f} s more before the next request "
                "for this mailbox (Retry-After)",
                kind=FailureKind.THROTTLED,
                retry_after_s=waiting,
                pause=classify_http(429, set(), waiting),
            )
        request = self.client.build_request(
            method, url, content=content, json=json, headers=headers
        )
        shown = {k: v for k, v in request.headers.items() if k.lower() in _SHOWN_REQUEST}
        self.transcript.request(method, url, shown, len(request.content or b""))
        # The wait for a slot is bounded by the requests ahead (each has its deadline); the
        # deadline counts from the moment this one goes out.
        async with self.gates.slot(self.key):
            try:
                async with asyncio.timeout(self.limit_s):
                    response = await self.client.send(request)
            except (TimeoutError, httpx.HTTPError, OSError) as exc:
                error = translate(step, exc, where=where, limit_s=self.limit_s)
                self.transcript.note(error.detail)
                raise error from None
        self.transcript.response(response)
        if response.status_code in THROTTLE_STATUSES:
            wait = self.retry_after(response)
            if wait is not None:
                self.gates.block(self.key, wait)
        return response


_SHOWN_REQUEST = {"authorization", "content-type", "content-range"}
