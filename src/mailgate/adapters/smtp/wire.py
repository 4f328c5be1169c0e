"""What goes on the wire: aiosmtplib with a transcript and two fast paths.

``RecordingSMTP`` writes every command and reply to a ``Transcript``, and skips work the
library does for inputs the outbox never produces: MAIL/RCPT address parsing for plain
addresses (``is_plain_address``) and DATA's line-end normalising and dot-stuffing passes for
content already in wire form (``data_wire_form``). Its DATA waits for the reply to the final
dot with a deadline of its own (``done_timeout``).

Version pin: the DATA fast path uses aiosmtplib's private internals (``SMTP.protocol``,
``SMTPProtocol._command_lock``, ``_response_pending``, ``read_response``) and mirrors
``SMTPProtocol.execute_data_command`` of aiosmtplib 5.x; pyproject.toml pins
``aiosmtplib>=5.1.2,<6`` for that reason. tests/integration/test_smtp_data_wire.py checks that
both fast paths put exactly the library's bytes on the wire: run it before moving the pin.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.typing import Default, SMTPStatus

from mailgate.adapters.smtp.transcript import Transcript

# An ASCII dot-atom addr-spec (RFC 5322 3.4.1) with a host-name domain: what the outbox
# stores after validation. aiosmtplib's quote_address (email.utils.parseaddr plus an
# injection check, about 7 us per call) returns such an address unchanged in angle brackets.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")


def is_plain_address(address: str) -> bool:
    """True when MAIL/RCPT can carry ``<address>`` as is; anything else (quoted local
    parts, domain literals, non-ASCII, display names) goes through aiosmtplib's parsing."""
    return PLAIN_ADDRESS.fullmatch(address) is not None


def needs_smtputf8(mail_from: str, rcpt_to: Sequence[str]) -> bool:
    """RFC 6531: non-ASCII in an envelope address needs the SMTPUTF8 extension."""
    return not all(a.isascii() for a in (mail_from, *rcpt_to))


def data_wire_form(message: bytes) -> bytes | None:
    """The bytes DATA sends for ``message`` (dot-stuffed, RFC 5321 4.5.2, and ended by
    ``.<CRLF>``) when it is already canonical: CRLF line ends only, ending with CRLF, as the
    outbox stores what it builds. ``None`` otherwise: the library then normalises it."""
    crlf = message.count(b"\r\n")
    if (
        not message.endswith(b"\r\n")
        or message.count(b"\n") != crlf
        or message.count(b"\r") != crlf
    ):
        return None
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def wire_content(message: bytes) -> bytes:
    """What follows the ``354``: the content dot-stuffed and ended by ``.<CRLF>``, exactly as
    aiosmtplib's DATA would send it."""
    wire = data_wire_form(message)
    if wire is None:
        wire = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
    return wire


class RecordingSMTP(aiosmtplib.SMTP):
    """aiosmtplib with every command and reply written to a ``Transcript``."""

    def __init__(self, transcript: Transcript, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transcript = transcript
        self.content_sent = False
        """True once the last ``data`` handed the whole content, final dot included, to the
        connection: a failure after that leaves the server possibly holding the message."""

    async def execute_command(
        self, *args: bytes, timeout: float | Literal[Default.token] | None = Default.token
    ) -> aiosmtplib.SMTPResponse:
        self.transcript.client(args)
        response = await super().execute_command(*args, timeout=timeout)
        self.transcript.server(response.code, response.message)
        return response

    async def mail(
        self,
        sender: str,
        /,
        *,
        options: Iterable[str] | None = None,
        encoding: str = "ascii",
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        if not is_plain_address(sender):
            return await super().mail(sender, options=options, encoding=encoding, timeout=timeout)
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(
            b"MAIL",
            b"FROM:<" + sender.encode("ascii") + b">",
            *(option.encode("ascii") for option in options or ()),
            timeout=timeout,
        )
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
        return response

    async def rcpt(
        self,
        recipient: str,
        /,
        *,
        options: Iterable[str] | None = None,
        encoding: str = "ascii",
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        if not is_plain_address(recipient):
            return await super().rcpt(
                recipient, options=options, encoding=encoding, timeout=timeout
            )
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(
            b"RCPT",
            b"TO:<" + recipient.encode("ascii") + b">",
            *(option.encode("ascii") for option in options or ()),
            timeout=timeout,
        )
        if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
        return response

    async def starttls(self, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.transcript.client([b"STARTTLS"])
        response = await super().starttls(**kwargs)
        self.transcript.server(response.code, response.message)
        return response

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
        done_timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        """DATA and the content. ``done_timeout`` bounds the wait for the reply after the
        final dot separately (RFC 5321 4.5.3.2.6: 10 minutes); by default ``timeout``."""
        self.content_sent = False
        self.transcript.client([b"DATA"])
        self.transcript.note(f"(message content, {len(message)} bytes)")
        if isinstance(message, str):
            message = message.encode("ascii")  # as the library does
        response = await self._data_wire(
            wire_content(message),
            timeout,
            timeout if done_timeout is Default.token else done_timeout,
        )
        self.transcript.server(response.code, response.message)
        return response

    async def _data_wire(
        self,
        wire: bytes,
        timeout: float | Literal[Default.token] | None,
        done_timeout: float | Literal[Default.token] | None,
    ) -> aiosmtplib.SMTPResponse:
        """``SMTP.data`` for content already in wire form (``wire_content``): the library's
        ``SMTPProtocol.execute_data_command`` without its two regular-expression passes over
        a canonical message (about 0.1 ms per 10 KB), and with its own deadline for the reply
        to the final dot. Mirrors aiosmtplib 5.x step by step (the pin in pyproject.toml,
        module docstring)."""
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        await self._ehlo_or_helo_if_needed()
        limit = self.timeout if timeout is Default.token else timeout
        done_limit = limit if done_timeout is Default.token else done_timeout
        try:
            lock = protocol._command_lock
            if lock is None:
                raise aiosmtplib.SMTPServerDisconnected("Server not connected")
            async with lock:
                # Mark a reply as expected before each write (as the library does), so data
                # arriving right after it is not discarded as unsolicited.
                protocol._response_pending = True
                protocol.write(b"DATA\r\n")
                start = await protocol.read_response(timeout=limit)
                if start.code != SMTPStatus.start_input:
                    raise aiosmtplib.SMTPDataError(start.code, start.message)
                protocol._response_pending = True
                protocol.write(wire)
                self.content_sent = True
                response = await protocol.read_response(timeout=done_limit)
                if response.code != SMTPStatus.completed:
                    raise aiosmtplib.SMTPDataError(response.code, response.message)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        except aiosmtplib.SMTPDataError as exc:
            if exc.code == SMTPStatus.domain_unavailable:
                self.close()  # 421: the server closes; so does the library after a command
            raise
        return response
