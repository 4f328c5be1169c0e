"""The mail transaction (RFC 5321 3.3) on an open connection: MAIL FROM with its ESMTP
options, RCPT TO for each recipient, DATA, and RSET before the next one. A refusal is a
``SendResult``; a broken connection is ``Broken`` (the session turns it into a
``TransportError``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiosmtplib

from mailgate.adapters.smtp.replies import RecipientReply, SendResult, SmtpReply
from mailgate.adapters.smtp.transcript import Transcript
from mailgate.adapters.smtp.wire import RecordingSMTP, needs_smtputf8
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import FailureKind, Step

_T = TypeVar("_T")
Pipelined = Callable[
    ["MailTransactions", float, str, list[str], bytes, list[str], str], Awaitable[SendResult]
]


class Broken(Exception):
    """The connection broke (or timed out) during ``step``; ``after_dot``: after the whole
    message, final dot included, went out (the server may have it)."""

    def __init__(self, step: str, cause: BaseException, *, after_dot: bool = False) -> None:
        super().__init__(step)
        self.step = step
        self.cause = cause
        self.after_dot = after_dot


async def in_step(step: str, awaitable: Awaitable[_T], *, after_dot: bool = False) -> _T:
    try:
        return await awaitable
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise Broken(step, exc, after_dot=after_dot) from exc


def ms_since(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


def overall(outcomes: Iterable[Outcome]) -> Outcome:
    """A message's outcome from its recipients': delivered only if all were, temporary if
    any may still be (those are retried), else permanent."""
    seen = set(outcomes)
    if seen == {Outcome.DELIVERED}:
        return Outcome.DELIVERED
    if Outcome.TEMPORARY in seen:
        return Outcome.TEMPORARY
    return Outcome.PERMANENT


@dataclass
class MailTransactions:
    """The transactions of one connection, one after the other. ``max_size`` is the
    server's SIZE (RFC 1870) once EHLO told it; ``record`` hears every step."""

    smtp: RecordingSMTP
    transcript: Transcript
    record: Callable[[Step], None]
    max_size: int | None = None
    needs_rset: bool = False
    pipelined: Pipelined | None = None
    """The RFC 2920 path (``pipelining.send_pipelined``), used when the server offers
    PIPELINING; ``None``: one command at a time."""
    data_done_s: float | None = None
    """The deadline for the reply to the final dot (``timeouts.data_done_s``); ``None``: the
    command timeout."""

    async def send(
        self, mail_from: str, recipients: list[str], message: bytes, *, dry_run: bool
    ) -> SendResult:
        """One transaction; raises ``Broken`` when the connection breaks or times out."""
        started = time.monotonic()
        smtp = self.smtp
        if self.needs_rset:
            try:
                await in_step("mail_from", smtp.rset())
            except aiosmtplib.SMTPResponseException as exc:
                reply = SmtpReply.parse(exc.code, exc.message)
                return self._fail_all(
                    started, "mail_from", recipients, reply.outcome, reply, f"RSET: {reply}"
                )
            self.needs_rset = False

        options: list[str] = []
        encoding = "ascii"
        if needs_smtputf8(mail_from, recipients):
            if not smtp.supports_extension("smtputf8"):
                return self._fail_all(
                    started,
                    "mail_from",
                    recipients,
                    Outcome.PERMANENT,
                    None,
                    "an address needs SMTPUTF8 (RFC 6531), which the server does not offer",
                    FailureKind.SMTPUTF8,
                )
            options.append("SMTPUTF8")
            encoding = "utf-8"
        if self.max_size is not None and len(message) > self.max_size:
            return self._fail_all(
                started,
                "mail_from",
                recipients,
                Outcome.PERMANENT,
                None,
                f"message of {len(message)} bytes exceeds the server's SIZE limit of "
                f"{self.max_size} bytes",
                FailureKind.TOO_LARGE,
            )
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(message)}")  # RFC 1870
        if not message.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")  # RFC 6152

        if self.pipelined is not None and not dry_run and smtp.supports_extension("pipelining"):
            return await self.pipelined(
                self, started, mail_from, recipients, message, options, encoding
            )

        t = time.monotonic()
        self.needs_rset = True
        try:
            response = await in_step(
                "mail_from", smtp.mail(mail_from, options=options, encoding=encoding)
            )
        except aiosmtplib.SMTPResponseException as exc:
            reply = SmtpReply.parse(exc.code, exc.message)
            self.record(Step("mail_from", False, ms_since(t), str(reply)))
            refused_all = {a: RecipientReply(reply.outcome, reply) for a in recipients}
            return self._result(started, "mail_from", refused_all, reply)
        self.record(
            Step(
                "mail_from",
                True,
                ms_since(t),
                str(SmtpReply.parse(response.code, response.message)),
            )
        )

        t = time.monotonic()
        results: dict[str, RecipientReply] = {}
        for address in recipients:
            try:
                response = await in_step("rcpt_to", smtp.rcpt(address, encoding=encoding))
            except aiosmtplib.SMTPResponseException as exc:
                reply = SmtpReply.parse(exc.code, exc.message)
                results[address] = RecipientReply(reply.outcome, reply)
                if not smtp.is_connected:
                    # e.g. 421: the server closed; the rest are not tried.
                    for rest in recipients:
                        results.setdefault(rest, RecipientReply(Outcome.TEMPORARY, reply))
                    break
            else:
                results[address] = RecipientReply(
                    Outcome.DELIVERED, SmtpReply.parse(response.code, response.message)
                )
        accepted = [a for a, r in results.items() if r.outcome is Outcome.DELIVERED]
        refused = [
            f"{a}: {r.reply}" for a, r in results.items() if r.outcome is not Outcome.DELIVERED
        ]
        rcpt_detail = f"{len(accepted)} of {len(recipients)} accepted"
        if refused:
            rcpt_detail += "; refused " + "; ".join(refused)
        self.record(
            Step("rcpt_to", bool(accepted), ms_since(t), self.transcript.scrub(rcpt_detail))
        )
        if not accepted:
            first = next(iter(results.values())).reply
            return self._result(started, "rcpt_to", results, first, rcpt_detail)

        if dry_run:
            await in_step("rcpt_to", smtp.rset())
            self.needs_rset = False
            return self._result(started, "rcpt_to", results, None, rcpt_detail)

        t = time.monotonic()
        done = smtp.timeout if self.data_done_s is None else self.data_done_s
        try:
            response = await smtp.data(message, done_timeout=done)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            raise Broken("data", exc, after_dot=smtp.content_sent) from exc
        except aiosmtplib.SMTPResponseException as exc:
            reply = SmtpReply.parse(exc.code, exc.message)
            self.record(Step("data", False, ms_since(t), str(reply)))
            for address in accepted:
                results[address] = RecipientReply(reply.outcome, reply)
            return self._result(started, "data", results, reply)
        self.needs_rset = False
        reply = SmtpReply.parse(response.code, response.message)
        self.record(Step("data", True, ms_since(t), str(reply)))
        for address in accepted:
            results[address] = RecipientReply(Outcome.DELIVERED, reply)
        return self._result(started, "data", results, reply)

    def _result(
        self,
        started: float,
        step: str,
        recipients: dict[str, RecipientReply],
        reply: SmtpReply | None,
        detail: str = "",
        kind: FailureKind | None = None,
    ) -> SendResult:
        return SendResult(
            overall(r.outcome for r in recipients.values()),
            reply,
            recipients,
            ms_since(started),
            step,
            self.transcript.scrub(detail or (str(reply) if reply else "")),
            kind,
        )

    def _fail_all(
        self,
        started: float,
        step: str,
        recipients: list[str],
        outcome: Outcome,
        reply: SmtpReply | None,
        detail: str,
        kind: FailureKind | None = None,
    ) -> SendResult:
        self.record(Step(step, False, 0, detail))
        results = {a: RecipientReply(outcome, reply) for a in recipients}
        return self._result(started, step, results, reply, detail, kind)
