"""The transport's fast paths put exactly the library's bytes on the wire: DATA for content
already in wire form (``data_wire_form``), MAIL and RCPT for plain addresses
(``is_plain_address``).

A raw socket server records every byte the client sends; the same envelopes and messages go
once through plain aiosmtplib and once through the transport's ``RecordingSMTP``
(adapters/smtp/wire.py, whose DATA fast path is why pyproject.toml pins aiosmtplib < 6).
"""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from mailgate.adapters.smtp.transcript import Transcript
from mailgate.adapters.smtp.wire import (
    PLAIN_ADDRESS,
    RecordingSMTP,
    data_wire_form,
    is_plain_address,
)

CANONICAL = [
    b"Subject: x\r\n\r\nhello\r\n",
    b".starts with a dot\r\n",
    b"Subject: x\r\n\r\n.\r\n..\r\n.x\r\nend\r\n",
    b"Subject: x\r\n\r\na lone dot follows\r\n.\r\n",
    b"\r\n",
    b"..\r\n",
]
NOT_CANONICAL = [
    b"Subject: x\n\nbare line feeds\n",
    b"Subject: x\r\rbare carriage returns\r",
    b"Subject: x\r\n\r\nno final line end",
    b"mixed\r\n.dot\nlf\r\n",
    b"\n.\n",
    b"",
]


def library_wire(message: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@pytest.mark.parametrize("message", CANONICAL)
def test_canonical_messages_get_the_library_bytes(message: bytes) -> None:
    assert data_wire_form(message) == library_wire(message)


@pytest.mark.parametrize("message", NOT_CANONICAL)
def test_anything_else_is_left_to_the_library(message: bytes) -> None:
    assert data_wire_form(message) is None


@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b" ", b"\r\n."])))
def test_fast_path_matches_the_library_or_declines(parts: list[bytes]) -> None:
    message = b"".join(parts)
    wire = data_wire_form(message)
    if normalize_message_line_endings(message) == message:
        assert wire == library_wire(message)
    else:
        assert wire is None


@given(st.from_regex(PLAIN_ADDRESS, fullmatch=True))
def test_a_plain_address_is_what_the_library_would_quote(address: str) -> None:
    assert is_plain_address(address)
    assert quote_address(address) == f"<{address}>"


@pytest.mark.parametrize(
    "address",
    [
        "Name <a@example.com>",
        '"a b"@example.com',
        "a@[127.0.0.1]",
        "a@example.com ",
        " a@example.com",
        "a@example.com>",
        "a@example.com\r\nRCPT TO:<x@y.z>",
        "a..b@example.com",
        ".a@example.com",
        "a@-example.com",
        "a@example.com.",
        "ä@example.com",
        "a@bücher.example",
        "a",
        "",
    ],
)
def test_anything_else_goes_through_the_library(address: str) -> None:
    assert not is_plain_address(address)


class Recorder:
    """An SMTP server that answers everything with success and keeps the raw bytes."""

    def __init__(self) -> None:
        self.received = bytearray()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 recorder ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            self.received += line
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(b"250 2.0.0 queued\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-recorder\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                in_data = True
                writer.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
        writer.close()


SENDERS = ["a@example.com", "Name <a.b+c@example.com>", '"a b"@example.com', "a@[127.0.0.1]"]
RECIPIENTS = [
    "b@example.org",
    "o'hara@mail.example.org",
    "Bob <b@example.org>",
    "x@[::1]",
    "c@example.org>\r\nRSET",  # the library's parsing drops the tail; so must we
    "d@example.org SIZE=1",
]


async def wire_bytes(client: aiosmtplib.SMTP, messages: list[bytes]) -> bytes:
    recorder = Recorder()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await client.connect(hostname="127.0.0.1", port=port, start_tls=False)
        for i, message in enumerate(messages):
            options = ["SIZE=" + str(len(message))] if i % 2 else []
            await client.mail(SENDERS[i % len(SENDERS)], options=options)
            await client.rcpt(RECIPIENTS[i % len(RECIPIENTS)])
            await client.data(message)
        await client.quit()
    finally:
        server.close()
        await server.wait_closed()
    return bytes(recorder.received)


def test_the_wire_is_identical_to_the_library() -> None:
    messages = CANONICAL + [m for m in NOT_CANONICAL if m]

    async def both() -> tuple[bytes, bytes, Transcript]:
        plain = await wire_bytes(aiosmtplib.SMTP(local_hostname="client.test"), messages)
        transcript = Transcript()
        ours = await wire_bytes(RecordingSMTP(transcript, local_hostname="client.test"), messages)
        return plain, ours, transcript

    plain, ours, transcript = asyncio.run(both())
    assert ours == plain
    assert plain.count(b"\r\n.\r\n") >= len(messages)
    data_lines = [line for line in transcript.lines if "DATA" in line or "content" in line]
    assert data_lines[:2] == ["C: DATA", f"*  (message content, {len(messages[0])} bytes)"]
