"""The SMTP transport behind the ports: ``SmtpTransport`` opens delivery sessions
(``ports.Transport``) and runs the server test (``ports.Prober``) on ``SmtpSession``.

The session's ``SendResult`` / ``TransportError`` become the domain's ``AttemptResult`` here,
and the probe reports them as ``Failure`` values; nothing above this module sees an SMTP
type.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mailgate.adapters.outbound import PolicySource
from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import SendResult, SmtpReply
from mailgate.adapters.smtp.session import STEPS, SmtpSession
from mailgate.adapters.smtp.transcript import Transcript
from mailgate.domain.messages import AttemptResult, Outcome, RecipientResult
from mailgate.domain.outbound import OutboundPolicy
from mailgate.domain.pauses import PauseSignal, classify_smtp
from mailgate.domain.transport import Failure, FailureKind, Step
from mailgate.ports import DeliverySession, ProbeFailed, SessionFailed, TokenProvider
from mailgate.schemas.email_server import ResolvedServer


def _reply(reply: SmtpReply | None) -> tuple[int | None, str]:
    if reply is None:
        return None, ""
    return reply.code, " ".join(p for p in (reply.enhanced, reply.text) if p)


def _pause_of(reply: SmtpReply | None) -> PauseSignal | None:
    if reply is None:
        return None
    return classify_smtp(reply.code, reply.enhanced, reply.text)


def from_transport_error(err: TransportError, ms: int) -> AttemptResult:
    code, text = _reply(err.reply)
    pause = _pause_of(err.reply)
    # A quota or throttling answer (even a 5xx one) is about the account, not the message.
    outcome = Outcome.TEMPORARY if pause is not None else Outcome(err.outcome.value)
    return AttemptResult(
        outcome,
        code,
        err.detail or text,
        ms,
        step=err.step,
        possibly_delivered=err.possibly_delivered,
        pause=pause,
    )


def from_send_result(result: SendResult) -> AttemptResult:
    code, text = _reply(result.reply)
    pause = _pause_of(result.reply)
    recipients = {}
    for address, rr in result.recipients.items():
        rcode, rtext = _reply(rr.reply)
        outcome = Outcome(rr.outcome.value)
        said = _pause_of(rr.reply) if outcome is not Outcome.DELIVERED else None
        if said is not None:
            # A quota answer to RCPT TO (Gmail's 550 5.4.5) holds this recipient back too.
            outcome = Outcome.TEMPORARY
            pause = pause or said
        recipients[address] = RecipientResult(outcome, rcode, rtext)
    overall = Outcome(result.outcome.value)
    if pause is not None and overall is Outcome.PERMANENT:
        overall = Outcome.TEMPORARY
    return AttemptResult(
        overall,
        code,
        text or result.detail,
        result.elapsed_ms,
        recipients,
        step=result.step,
        pause=pause,
    )


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class SmtpDeliverySession:
    """``ports.DeliverySession`` on one SMTP connection."""

    def __init__(self, session: SmtpSession) -> None:
        self.session = session

    @property
    def usable(self) -> bool:
        return bool(self.session.usable)

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult:
        started = time.monotonic()
        try:
            result = await self.session.send(mail_from, rcpt_to, raw)
        except TransportError as err:
            return from_transport_error(err, _ms(started))
        return from_send_result(result)

    async def close(self) -> None:
        await self.session.close()


class _StepSink(list[Step]):
    """The session's step list, passing each step on as it is recorded."""

    def __init__(self, on_step: Callable[[Step], None]) -> None:
        super().__init__()
        self.on_step = on_step

    def append(self, step: Step) -> None:
        super().append(step)
        self.on_step(step)


class SmtpProbe:
    """``ports.Probe`` over SMTP: the steps ``resolve`` ... ``data`` of one session."""

    step_names = STEPS

    def __init__(
        self,
        server: ResolvedServer,
        tokens: TokenProvider | None,
        on_step: Callable[[Step], None],
        policy: OutboundPolicy | None = None,
    ) -> None:
        self.server = server
        self.tokens = tokens
        self.policy = policy
        self._steps = _StepSink(on_step)
        self._transcript = Transcript()
        self._session: SmtpSession | None = None

    @property
    def budget_s(self) -> float:
        # resolve + connect (+ implicit TLS) bounded by connect_s; the rest by command_s each,
        # at most ~10 exchanges (EHLO, STARTTLS, EHLO, AUTH x2 and a token, MAIL, RCPT, DATA,
        # QUIT).
        timeouts = self.server.config.timeouts
        return 2 * timeouts.connect_s + 10 * timeouts.command_s + 1

    @property
    def transcript(self) -> list[str]:
        return self._transcript.lines

    @property
    def warnings(self) -> list[str]:
        # A session that did not open reports its failure, not its warnings.
        return self._session.warnings if self._session is not None else []

    def note(self, text: str) -> None:
        self._transcript.note(text)

    async def open(self) -> None:
        try:
            self._session = await SmtpSession.open(
                self.server,
                token_provider=self.tokens,
                transcript=self._transcript,
                steps=self._steps,
                policy=self.policy,
            )
        except TransportError as err:
            raise ProbeFailed(err.failure) from err

    async def send(
        self, mail_from: str, rcpt_to: str, raw: bytes, *, dry_run: bool
    ) -> Failure | None:
        assert self._session is not None, "open() first"
        try:
            result = await self._session.send(mail_from, [rcpt_to], raw, dry_run=dry_run)
        except TransportError as err:
            raise ProbeFailed(err.failure) from err
        if result.outcome is Outcome.DELIVERED:
            return None
        refused = result.recipients.get(rcpt_to)
        reply = (refused.reply if refused is not None else None) or result.reply
        return Failure(result.step, result.kind or FailureKind.REPLY, reply, result.detail)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class SmtpTransport:
    """Mail over SMTP, as ``ports.Transport`` (delivery) and ``ports.Prober`` (the test).
    ``policy``: where connections may go (``adapters/outbound.py``)."""

    def __init__(self, policy: PolicySource = OutboundPolicy) -> None:
        self.policy = policy

    async def open(self, server: ResolvedServer, tokens: TokenProvider | None) -> DeliverySession:
        started = time.monotonic()
        try:
            session = await SmtpSession.open(server, token_provider=tokens, policy=self.policy())
        except TransportError as err:
            raise SessionFailed(from_transport_error(err, _ms(started))) from None
        return SmtpDeliverySession(session)

    def probe(
        self, server: ResolvedServer, tokens: TokenProvider | None, on_step: Callable[[Step], None]
    ) -> SmtpProbe:
        return SmtpProbe(server, tokens, on_step, self.policy())
