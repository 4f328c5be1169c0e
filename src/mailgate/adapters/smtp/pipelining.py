"""ESMTP PIPELINING (RFC 2920) for the mail transaction.

When the server offers ``PIPELINING``, MAIL FROM, every RCPT TO and DATA go out in one write,
and the message content after the ``354``: two round trips per message instead of three plus
one per recipient. The outcome of every message is the same as without pipelining (the rules
of ``transaction.MailTransactions.send``, which this mirrors step for step; a test runs both
paths through the same scripts and compares the results).

aiosmtplib expects one reply per command it wrote: its protocol parses the first reply of a
read and drops whatever arrives while that reply waits to be picked up, so a second reply in
the same read would be lost. For the exchange the connection's protocol is swapped for a
``ReplyReader``, which parses every complete reply out of whatever arrives (split anywhere,
several in one read, multi-line) and hands them out in order; then the library's protocol is
put back. The swap uses aiosmtplib's internals (``SMTP.protocol``, its ``transport`` and
``_command_lock``), like the DATA fast path in ``wire.py``: same version pin.

RFC 2920 3.1 rules kept here: DATA is the last command of the group; the client checks every
reply; if no recipient was accepted but the server still answers ``354`` to DATA, the client
sends a lone dot to end the (empty) message.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH

from mailgate.adapters.smtp.replies import RecipientReply, SendResult, SmtpReply
from mailgate.adapters.smtp.transaction import Broken, in_step, ms_since
from mailgate.adapters.smtp.wire import is_plain_address, wire_content
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import Step

if TYPE_CHECKING:
    from mailgate.adapters.smtp.transaction import MailTransactions
    from mailgate.adapters.smtp.wire import RecordingSMTP

_ACCEPTED_RCPT = (250, 251)
_CLOSING = 421


class ReplyReader(asyncio.Protocol):
    """Every SMTP reply in the byte stream, in order, however the stream is cut.

    Installed on the transport in place of aiosmtplib's protocol for one exchange. A lost
    connection is passed on to that protocol too, so the library sees its connection closed.
    """

    def __init__(self, previous: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
        self.previous = previous
        self.transport = transport
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._size = 0
        self._replies: deque[aiosmtplib.SMTPResponse] = deque()
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPServerDisconnected as exc:
            self._error = exc
            self.transport.close()
        self._wake()

    def eof_received(self) -> bool:
        if self._error is None:
            self._error = aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
        self._wake()
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            error = aiosmtplib.SMTPServerDisconnected("Connection lost")
            error.__cause__ = exc
            self._error = error
        self._wake()
        self.previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self.previous.pause_writing()

    def resume_writing(self) -> None:
        self.previous.resume_writing()

    # ---- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        buffer, start = self._buffer, 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start : end + 1])
            start = end + 1
            if len(line) > MAX_LINE_LENGTH:
                raise aiosmtplib.SMTPServerDisconnected("reply line too long")
            try:
                code = int(line[:3])
            except ValueError:
                shown = line.decode("utf-8", "replace").strip()[:80]
                raise aiosmtplib.SMTPServerDisconnected(
                    f"malformed SMTP reply line: {shown!r}"
                ) from None
            # As aiosmtplib: the text after the code and separator, the lines joined by "\n",
            # the code of the last line.
            text = line[4:].strip(b" \t\r\n")
            self._lines.append(text)
            self._size += len(line)
            if self._size > MAX_RESPONSE_LENGTH:
                raise aiosmtplib.SMTPServerDisconnected("reply too long")
            if line[3:4] != b"-":
                message = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                self._replies.append(aiosmtplib.SMTPResponse(code, message))
                self._lines, self._size = [], 0
        del buffer[:start]
        if len(buffer) > MAX_LINE_LENGTH:
            raise aiosmtplib.SMTPServerDisconnected("reply line too long")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- for the exchange ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._error is not None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def reply(self, timeout: float | None) -> aiosmtplib.SMTPResponse:
        """The next reply; ``SMTPServerDisconnected`` if the connection ends first,
        ``SMTPReadTimeoutError`` if none is complete within ``timeout`` seconds."""
        if self._replies:
            return self._replies.popleft()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._replies:
                return self._replies.popleft()
            if self._error is not None:
                raise self._error
            waiter = loop.create_future()
            self._waiter = waiter
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response"
                ) from exc
            finally:
                self._waiter = None


@asynccontextmanager
async def exchange(smtp: aiosmtplib.SMTP) -> AsyncIterator[ReplyReader]:
    """A ``ReplyReader`` on the connection for the duration of the block, holding the
    library's command lock; the library's protocol is put back afterwards."""
    protocol = smtp.protocol
    lock = protocol._command_lock if protocol is not None else None
    if protocol is None or lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    async with lock:
        transport = cast(asyncio.Transport | None, protocol.transport)
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        reader = ReplyReader(protocol, transport)
        transport.set_protocol(reader)
        try:
            yield reader
        finally:
            if not transport.is_closing():
                transport.set_protocol(protocol)
            elif smtp.protocol is protocol:
                # Closed by us (a 421, a broken reply) or by the server: make sure the
                # library sees it now, not when the event loop gets to it.
                smtp.close()


def _address(prefix: bytes, address: str, encoding: str) -> bytes:
    if is_plain_address(address):
        return prefix + b"<" + address.encode("ascii") + b">"
    return prefix + quote_address(address).encode(encoding)


def _command(args: Sequence[bytes]) -> bytes:
    for arg in args:
        if COMMAND_INJECTION_REGEX.search(arg):
            # As aiosmtplib's execute_command; the outbox never stores such an address.
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


async def send_pipelined(
    tx: MailTransactions,
    started: float,
    mail_from: str,
    recipients: list[str],
    message: bytes,
    options: list[str],
    encoding: str,
) -> SendResult:
    """One transaction with MAIL, RCPT and DATA in one write; the outcome rules of
    ``MailTransactions.send``. Raises ``Broken`` when the connection breaks or times out."""
    smtp: RecordingSMTP = tx.smtp
    transcript = tx.transcript
    timeout = smtp.timeout
    groups: list[list[bytes]] = [
        [b"MAIL", _address(b"FROM:", mail_from, encoding), *(o.encode("ascii") for o in options)],
        *([b"RCPT", _address(b"TO:", a, encoding)] for a in recipients),
        [b"DATA"],
    ]
    commands = b"".join(_command(args) for args in groups)
    protocol = smtp.protocol
    if protocol is None or protocol._command_lock is None or not smtp.is_connected:
        raise Broken("mail_from", aiosmtplib.SMTPServerDisconnected("Connection lost"))

    def heard(response: aiosmtplib.SMTPResponse) -> SmtpReply:
        transcript.server(response.code, response.message)
        return SmtpReply.parse(response.code, response.message)

    tx.needs_rset = True
    t = time.monotonic()
    async with exchange(smtp) as r:
        for args in groups:
            transcript.client(args)
        _send(r, commands, "mail_from")
        response = await in_step("mail_from", r.reply(timeout))
        reply = heard(response)
        if response.code != 250:
            tx.record(Step("mail_from", False, ms_since(t), str(reply)))
            if response.code == _CLOSING:
                r.transport.close()
            else:
                await _finish_refused(r, len(recipients), timeout, heard)
            refused_all = {a: RecipientReply(reply.outcome, reply) for a in recipients}
            return tx._result(started, "mail_from", refused_all, reply)
        tx.record(Step("mail_from", True, ms_since(t), str(reply)))

        t = time.monotonic()
        results: dict[str, RecipientReply] = {}
        closed = False
        for index, address in enumerate(recipients):
            response = await in_step("rcpt_to", r.reply(timeout))
            reply = heard(response)
            if response.code in _ACCEPTED_RCPT:
                results[address] = RecipientReply(Outcome.DELIVERED, reply)
                continue
            results[address] = RecipientReply(reply.outcome, reply)
            if response.code == _CLOSING:
                # The server closes the connection: the rest are not tried.
                r.transport.close()
                for rest in recipients[index + 1 :]:
                    results[rest] = RecipientReply(Outcome.TEMPORARY, reply)
                closed = True
                break
        accepted = [a for a, rr in results.items() if rr.outcome is Outcome.DELIVERED]
        refused = [
            f"{a}: {rr.reply}" for a, rr in results.items() if rr.outcome is not Outcome.DELIVERED
        ]
        rcpt_detail = f"{len(accepted)} of {len(recipients)} accepted"
        if refused:
            rcpt_detail += "; refused " + "; ".join(refused)
        tx.record(Step("rcpt_to", bool(accepted), ms_since(t), transcript.scrub(rcpt_detail)))
        if not accepted:
            if not closed:
                await _finish_refused(r, 0, timeout, heard)
            first = next(iter(results.values())).reply
            return tx._result(started, "rcpt_to", results, first, rcpt_detail)
        if closed:
            # As without pipelining: DATA on the closed connection finds it lost.
            raise Broken("data", aiosmtplib.SMTPServerDisconnected("Connection lost"))

        t = time.monotonic()
        response = await in_step("data", r.reply(timeout))
        reply = heard(response)
        if response.code != 354:
            tx.record(Step("data", False, ms_since(t), str(reply)))
            if response.code == _CLOSING:
                r.transport.close()
            for address in accepted:
                results[address] = RecipientReply(reply.outcome, reply)
            return tx._result(started, "data", results, reply)
        transcript.note(f"(message content, {len(message)} bytes)")
        _send(r, wire_content(message), "data")
        done = timeout if tx.data_done_s is None else tx.data_done_s
        response = await in_step("data", r.reply(done), after_dot=True)
        reply = heard(response)
        if response.code != 250:
            tx.record(Step("data", False, ms_since(t), str(reply)))
            if response.code == _CLOSING:
                r.transport.close()
            for address in accepted:
                results[address] = RecipientReply(reply.outcome, reply)
            return tx._result(started, "data", results, reply)
    tx.needs_rset = False
    tx.record(Step("data", True, ms_since(t), str(reply)))
    for address in accepted:
        results[address] = RecipientReply(Outcome.DELIVERED, reply)
    return tx._result(started, "data", results, reply)


def _send(r: ReplyReader, data: bytes, step: str) -> None:
    try:
        r.write(data)
    except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
        raise Broken(step, exc) from exc


async def _finish_refused(
    r: ReplyReader,
    rcpt_replies: int,
    timeout: float | None,
    heard: Callable[[aiosmtplib.SMTPResponse], SmtpReply],
) -> None:
    """After a refused MAIL (or every RCPT refused), read the replies still owed to the
    group, the last being DATA's. A ``354`` all the same gets a lone dot (RFC 2920 3.1).
    The outcome is decided already: a connection that breaks meanwhile is only closed, for
    the next message to notice."""
    try:
        for _ in range(rcpt_replies):
            heard(await r.reply(timeout))
        response = await r.reply(timeout)
        heard(response)
        if response.code == 354:
            r.write(b".\r\n")
            heard(await r.reply(timeout))
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError):
        r.transport.close()
