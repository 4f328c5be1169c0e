"""An HTTP mail API as ``ports.Transport`` (delivery sessions) and ``ports.Prober`` (the
server test with the steps ``token`` and ``send``).

What differs between Graph and the Gmail API - the requests, how an answer is classified,
what a token must say - is a ``MailApi`` (``graph.py``, ``gmail_api.py``); the session, the
probe, the client's life and the token's are the same for both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mailgate.adapters.http_api.client import api_client
from mailgate.adapters.http_api.exchange import ApiCall, ApiError, MailboxGates
from mailgate.adapters.http_api.transcript import HttpTranscript
from mailgate.adapters.outbound import PolicySource
from mailgate.domain.clock import Clock
from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.domain.outbound import OutboundPolicy
from mailgate.domain.transport import Failure, Step
from mailgate.ports import DeliverySession, ProbeFailed, SessionFailed, TokenProvider
from mailgate.schemas.email_server import ResolvedServer

log = logging.getLogger("mailgate.worker")

STEPS = ("token", "send")

TokenRejected = Callable[[ResolvedServer, str], Awaitable[None]]
"""Told when the API refused a freshly refreshed token of a delegated grant: the
configuration needs re-authorization (``OAuth2Tokens.token_rejected``)."""


@dataclass(frozen=True)
class TokenCheck:
    """What the server test's ``token`` step says about a token."""

    detail: str
    failure: ApiError | None = None
    warnings: list[str] = field(default_factory=list)


class MailApi(Protocol):
    """One HTTP mail API: how to send a message and how to read its answers."""

    name: str
    """For people: "Microsoft Graph", "the Gmail API"."""
    concurrency: int | None
    """Requests at once per mailbox (``None``: no limit of the API's)."""

    def mailbox_key(self, server: ResolvedServer) -> str: ...

    def check_token(self, server: ResolvedServer, token: str) -> TokenCheck: ...

    async def deliver(
        self, call: ApiCall, server: ResolvedServer, rcpt_to: list[str], raw: bytes
    ) -> tuple[int, str]:
        """Send one message; (HTTP status, text) when accepted, else ``ApiError``."""
        ...


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


def _limit_s(server: ResolvedServer) -> float:
    # Each request as a whole: connecting (connect_s) and the exchange (command_s).
    timeouts = server.config.timeouts
    return timeouts.connect_s + timeouts.command_s


def _delegated(server: ResolvedServer) -> bool:
    return server.config.authentication.grant != "client_credentials"


class ApiSession:
    """``ports.DeliverySession`` over one HTTP client (its connections are kept alive)."""

    def __init__(self, transport: ApiTransport, server: ResolvedServer, call: ApiCall) -> None:
        self.transport = transport
        self.server = server
        self.call = call
        self._open = True

    @property
    def usable(self) -> bool:
        return self._open

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult:
        started = time.monotonic()
        try:
            status, text = await self.transport.api.deliver(self.call, self.server, rcpt_to, raw)
        except ApiError as err:
            if err.rejected and _delegated(self.server):
                await self.transport.token_rejected(self.server, err.detail)
            return err.result(_ms(started))
        return AttemptResult(Outcome.DELIVERED, status, text, _ms(started), step="send")

    async def close(self) -> None:
        self._open = False
        await self.call.client.aclose()


class ApiProbe:
    """``ports.Probe`` of an API transport: ``token`` (get it, say what it is for and may
    do) and ``send``; a dry run stops after ``token``."""

    step_names = STEPS

    def __init__(
        self,
        transport: ApiTransport,
        server: ResolvedServer,
        tokens: TokenProvider | None,
        on_step: Callable[[Step], None],
    ) -> None:
        self.transport = transport
        self.server = server
        self.on_step = on_step
        self._transcript = HttpTranscript()
        self._warnings: list[str] = []
        self.call = transport.call(server, tokens, self._transcript)

    @property
    def budget_s(self) -> float:
        # The token (one request to the token endpoint), then the send: a request, and once
        # more after a 401 with a fresh token.
        return 4 * _limit_s(self.server) + 1

    @property
    def transcript(self) -> list[str]:
        return self._transcript.lines

    @property
    def warnings(self) -> list[str]:
        return self._warnings

    def note(self, text: str) -> None:
        self._transcript.note(text)

    async def open(self) -> None:
        started = time.monotonic()
        try:
            token = await self.call.token(step="token")
        except ApiError as err:
            self.on_step(Step("token", False, _ms(started), err.detail))
            raise ProbeFailed(err.failure) from None
        check = self.transport.api.check_token(self.server, token)
        self._warnings.extend(check.warnings)
        if check.failure is None:
            self.on_step(Step("token", True, _ms(started), check.detail))
            return
        detail = f"{check.failure.detail} ({check.detail})"
        self.on_step(Step("token", False, _ms(started), detail))
        raise ProbeFailed(check.failure.failure)

    async def send(
        self, mail_from: str, rcpt_to: str, raw: bytes, *, dry_run: bool
    ) -> Failure | None:
        if dry_run:
            self.note("dry run: nothing is sent")
            return None
        started = time.monotonic()
        try:
            _status, text = await self.transport.api.deliver(self.call, self.server, [rcpt_to], raw)
        except ApiError as err:
            self.on_step(Step("send", False, _ms(started), err.detail))
            if err.reply is None:  # no answer from the API: the way there failed
                raise ProbeFailed(err.failure) from None
            return err.failure
        self.on_step(Step("send", True, _ms(started), text))
        return None

    async def close(self) -> None:
        await self.call.client.aclose()


class ApiTransport:
    """Mail through an HTTP API, as ``ports.Transport`` and ``ports.Prober``."""

    def __init__(
        self,
        api: MailApi,
        *,
        ca_bundle: Path | None,
        clock: Clock,
        on_token_rejected: TokenRejected | None = None,
        policy: PolicySource = OutboundPolicy,
    ) -> None:
        self.api = api
        self.ca_bundle = ca_bundle
        self.policy = policy
        self.gates = MailboxGates(clock, api.concurrency)
        self.on_token_rejected = on_token_rejected

    def call(
        self, server: ResolvedServer, tokens: TokenProvider | None, transcript: HttpTranscript
    ) -> ApiCall:
        timeouts = server.config.timeouts
        return ApiCall(
            api=self.api.name,
            client=api_client(
                self.ca_bundle,
                connect_s=timeouts.connect_s,
                command_s=timeouts.command_s,
                policy=self.policy,
            ),
            tokens=tokens,
            gates=self.gates,
            mailbox_key=self.api.mailbox_key(server),
            limit_s=_limit_s(server),
            transcript=transcript,
        )

    async def open(self, server: ResolvedServer, tokens: TokenProvider | None) -> DeliverySession:
        started = time.monotonic()
        call = self.call(server, tokens, HttpTranscript(limit=0))
        try:
            await call.token(step="token")
        except ApiError as err:
            await call.client.aclose()
            raise SessionFailed(err.result(_ms(started))) from None
        return ApiSession(self, server, call)

    def probe(
        self, server: ResolvedServer, tokens: TokenProvider | None, on_step: Callable[[Step], None]
    ) -> ApiProbe:
        return ApiProbe(self, server, tokens, on_step)

    async def token_rejected(self, server: ResolvedServer, detail: str) -> None:
        if self.on_token_rejected is None:
            return
        try:
            await self.on_token_rejected(server, detail)
        except Exception as exc:  # the message's own result is what counts here
            log.warning("recording a rejected token failed: %s", type(exc).__name__)
