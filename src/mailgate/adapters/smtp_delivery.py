"""The delivery worker's port (``services.delivery.DeliverySession``) on the SMTP transport:
its ``SendResult`` / ``TransportError`` become the domain's ``AttemptResult``."""

from __future__ import annotations

import time

from mailgate.adapters.smtp import SendResult, SmtpReply, SmtpSession, TransportError
from mailgate.domain.messages import AttemptResult, Outcome, RecipientResult
from mailgate.ports import DeliverySession, SessionFailed, TokenProvider
from mailgate.schemas.email_server import ResolvedServer


def _reply(reply: SmtpReply | None) -> tuple[int | None, str]:
    if reply is None:
        return None, ""
    return reply.code, " ".join(p for p in (reply.enhanced, reply.text) if p)


def from_transport_error(err: TransportError, ms: int) -> AttemptResult:
    code, text = _reply(err.reply)
    return AttemptResult(Outcome(err.outcome.value), code, err.detail or text, ms, step=err.step)


def from_send_result(result: SendResult) -> AttemptResult:
    code, text = _reply(result.reply)
    recipients = {}
    for address, rr in result.recipients.items():
        rcode, rtext = _reply(rr.reply)
        recipients[address] = RecipientResult(Outcome(rr.outcome.value), rcode, rtext)
    return AttemptResult(
        Outcome(result.outcome.value),
        code,
        text or result.detail,
        result.elapsed_ms,
        recipients,
        step=result.step,
    )


class SmtpDeliverySession:
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
            return from_transport_error(err, int((time.monotonic() - started) * 1000))
        return from_send_result(result)

    async def close(self) -> None:
        await self.session.close()


async def open_smtp_session(
    server: ResolvedServer, tokens: TokenProvider | None
) -> DeliverySession:
    started = time.monotonic()
    try:
        session = await SmtpSession.open(server, token_provider=tokens)
    except TransportError as err:
        raise SessionFailed(
            from_transport_error(err, int((time.monotonic() - started) * 1000))
        ) from None
    return SmtpDeliverySession(session)
