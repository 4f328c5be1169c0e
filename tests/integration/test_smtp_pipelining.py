"""ESMTP PIPELINING (adapters/smtp/pipelining.py) against real servers.

- aiosmtpd (tests/smtp_fixtures.py offers PIPELINING by default, so the whole suite delivers
  through the pipelined path) with TLS, refusals in the middle of a group and a 421;
- ``Chunky``, a server of this module that cuts its replies anywhere and glues them together
  (random, seeded): byte by byte, several replies in one write, multi-line replies. Its
  replies are scripted by the addresses (``m250.d354.f250@...`` for MAIL, DATA and the final
  reply, ``r550@...`` for a recipient), so one script runs through both paths;
- the equivalence test: hundreds of random transactions, once pipelined and once with the
  server not offering PIPELINING, must give the same outcome, step, replies and per-recipient
  results, on asyncio's and on uvloop's event loop.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import uvloop
from tests.smtp_fixtures import HOST, SmtpServers, resolved

from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import SendResult
from mailgate.adapters.smtp.session import SmtpSession
from mailgate.adapters.smtp.transcript import Transcript
from mailgate.domain.messages import Outcome

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n.dot\r\n"

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_in(loop_name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(coro)


# ---- the scripted, chunking server -------------------------------------------------------------

TEXTS = {
    "220": "220 chunky.test ESMTP",
    "221": "221 2.0.0 bye",
    "250": "250 2.1.0 ok",
    "250ml": "250-2.1.0 first line\r\n250-2.1.0 second line\r\n250 2.1.0 third line",
    "251": "251 2.1.5 will forward",
    "354": "354 go ahead",
    "354any": "354 go ahead",
    "421": "421 4.7.0 closing the connection",
    "450": "450 4.2.1 mailbox busy",
    "451": "451 4.3.0 local error",
    "452": "452 4.5.3 too many recipients",
    "503": "503 5.5.1 bad sequence of commands",
    "550": "550 5.1.1 no such user",
    "550ml": "550-5.1.1 no such user\r\n550 5.1.1 see https://example.org/why",
    "552": "552 5.3.4 message too big",
    "554": "554 5.5.1 no valid recipients",
}
_LOCAL = re.compile(r"<([^@>]*)@")


def _script(command: str) -> dict[str, str]:
    match = _LOCAL.search(command)
    parts = match.group(1).split(".") if match else []
    return {p[0]: p[1:] for p in parts if p}


@dataclass
class Chunky:
    """An SMTP server whose reply bytes are cut and glued at random (seeded)."""

    rng: random.Random
    pipelining: bool
    port: int = 0
    received: list[tuple[list[str], bytes]] = field(default_factory=list)
    reads: list[bytes] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ChunkyConnection(self), HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def config(self, **kw: Any) -> dict[str, Any]:
        return {
            "name": "CHUNKY",
            "protocol": "smtp",
            "host": HOST,
            "port": self.port,
            "starttls": "disabled",
            "helo_name": "client.mailgate.test",
            "timeouts": {"connect_s": 5, "command_s": 5},
            **kw,
        }


class _ChunkyConnection(asyncio.Protocol):
    def __init__(self, owner: Chunky) -> None:
        self.owner = owner
        self.rng = owner.rng
        self.buf = b""
        self.out = b""
        self.flushing = False
        self.closing = False
        self.in_data = False
        self.script: dict[str, str] | None = None
        self.rcpts: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport
        self.reply("220")
        self.flush_soon()

    def data_received(self, data: bytes) -> None:
        self.owner.reads.append(data)
        self.buf += data
        while not self.closing:
            if self.in_data:
                if self.buf.startswith(b".\r\n"):
                    content, self.buf = b"", self.buf[3:]
                else:
                    end = self.buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    content, self.buf = self.buf[: end + 2], self.buf[end + 5 :]
                self.in_data = False
                assert self.script is not None
                code = self.script.get("f", "250")
                if code.startswith("2") and self.rcpts:
                    self.owner.received.append((list(self.rcpts), content))
                elif not self.rcpts:
                    self.owner.received.append(([], content))
                self.script, self.rcpts = None, []
                self.reply(code)
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                break
            line, self.buf = self.buf[:end].decode(), self.buf[end + 2 :]
            self.command(line)
        self.flush_soon()

    def command(self, line: str) -> None:
        verb = line[:4].upper()
        if verb == "EHLO":
            ext = ["250-chunky.test", "250-8BITMIME"]
            if self.owner.pipelining:
                ext.append("250-PIPELINING")
            self.reply_text("\r\n".join([*ext, "250 SIZE 10000000"]))
        elif verb == "HELO":
            self.reply("250")
        elif verb == "MAIL":
            script = _script(line)
            code = script.get("m", "250")
            if code.startswith("2"):
                self.script, self.rcpts = script, []
            self.reply(code)
        elif verb == "RCPT":
            if self.script is None:
                self.reply("503")
                return
            code = _script(line).get("r", "250")
            if code in ("250", "250ml", "251"):
                self.rcpts.append(_LOCAL.search(line).group(1))  # type: ignore[union-attr]
            self.reply(code)
        elif verb == "DATA":
            if self.script is None:
                self.reply("503")
            elif not self.rcpts:
                self.reply("354" if self.script.get("d") == "354any" else "554")
                self.in_data = self.script.get("d") == "354any"
            else:
                code = self.script.get("d", "354")
                self.in_data = code.startswith("354")
                if not self.in_data and code != "drop":
                    self.script = None
                self.reply(code)
        elif verb == "RSET":
            self.script, self.rcpts = None, []
            self.reply("250")
        elif verb == "QUIT":
            self.reply("221")
            self.closing = True
        else:
            self.reply("250")

    def reply(self, code: str) -> None:
        if code == "drop":  # close without a word (after what is owed already)
            self.closing = True
            return
        self.reply_text(TEXTS[code])
        if code == "421":
            self.closing = True

    def reply_text(self, text: str) -> None:
        self.out += text.encode() + b"\r\n"

    def flush_soon(self) -> None:
        if not self.flushing and (self.out or self.closing):
            self.flushing = True
            asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            await asyncio.sleep(0)  # more of a pipelined group may arrive and be glued on
        while self.out:
            size = rng.choice([1, 2, 3, 7, 16, len(self.out), len(self.out), len(self.out)])
            chunk, self.out = self.out[:size], self.out[size:]
            if self.t.is_closing():
                return
            self.t.write(chunk)
            pause = rng.random()
            if pause < 0.3:
                await asyncio.sleep(0)
            elif pause < 0.4:
                await asyncio.sleep(0.001)
        self.flushing = False
        if self.closing:
            self.t.close()


# ---- a random workload, run through both paths --------------------------------------------


RCPT_REPLIES = [
    ("250", 20),
    ("251", 2),
    ("250ml", 2),
    ("550", 3),
    ("550ml", 1),
    ("450", 3),
    ("452", 1),
    ("421", 1),
    ("drop", 1),
]


def random_transaction(rng: random.Random, n: int) -> tuple[str, list[str]]:
    def pick(options: list[tuple[str, int]]) -> str:
        return rng.choices([o for o, _w in options], [w for _o, w in options])[0]

    m = pick([("250", 20), ("250ml", 3), ("550", 2), ("451", 2), ("421", 1), ("drop", 1)])
    d = pick([("354", 20), ("554", 2), ("451", 1), ("421", 1), ("354any", 2), ("drop", 1)])
    f = pick([("250", 20), ("250ml", 3), ("552", 2), ("451", 2), ("421", 1), ("drop", 1)])
    mail_from = f"m{m}.d{d}.f{f}.n{n}@example.com"
    rcpts = []
    for i in range(rng.choice([1, 1, 2, 3, 4])):
        r = pick(RCPT_REPLIES)
        rcpts.append(f"r{r}.i{i}.n{n}@example.org")
    return mail_from, rcpts


def outcome_of(result: SendResult | TransportError) -> Any:
    """What must be the same with and without pipelining (not timings, not the transcript)."""
    if isinstance(result, TransportError):
        return ("error", result.outcome, result.step, result.kind, result.reply)
    return (
        result.outcome,
        result.step,
        result.reply,
        result.kind,
        result.detail,
        {a: (r.outcome, r.reply) for a, r in result.recipients.items()},
    )


async def run_workload(server: Chunky, transactions: list[tuple[str, list[str]]]) -> list[Any]:
    outcomes: list[Any] = []
    session: SmtpSession | None = None
    for mail_from, rcpts in transactions:
        if session is None or not session.usable:
            session = await SmtpSession.open(resolved(server.config()), transcript=Transcript())
        try:
            outcomes.append(outcome_of(await session.send(mail_from, rcpts, MESSAGE)))
        except TransportError as err:
            outcomes.append(outcome_of(err))
        outcomes.append(("usable", session.usable))
    if session is not None:
        await session.close()
    return outcomes


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pipelined_outcomes_equal_the_unpipelined_ones(loop_name: str, seed: int) -> None:
    """The same 120 random transactions (refusals anywhere, 421s, dropped connections,
    multi-line replies, a 354 after every recipient was refused) through a server that cuts
    and glues its replies at random: with PIPELINING offered and without, every outcome,
    step, reply and per-recipient result is the same, and so is what the server received."""
    rng = random.Random(seed)
    transactions = [random_transaction(rng, n) for n in range(120)]

    async def both() -> tuple[list[Any], list[Any], Chunky, Chunky]:
        piped = Chunky(random.Random(seed * 7), pipelining=True)
        plain = Chunky(random.Random(seed * 7), pipelining=False)
        await piped.start()
        await plain.start()
        try:
            return (
                await run_workload(piped, transactions),
                await run_workload(plain, transactions),
                piped,
                plain,
            )
        finally:
            for s in (piped, plain):
                assert s.server is not None
                s.server.close()

    with_pipelining, without, piped, plain = run_in(loop_name, both())
    assert with_pipelining == without
    delivered = [(r, c) for r, c in plain.received if r]
    assert [(r, c) for r, c in piped.received if r] == delivered
    # The workload reaches every branch: deliveries, refusals, breaks.
    kinds = {o[0] if o[0] != "error" else "error" for o in without if o[0] != "usable"}
    assert {Outcome.DELIVERED, Outcome.TEMPORARY, Outcome.PERMANENT, "error"} <= kinds
    # Pipelined: MAIL, RCPT ... and DATA reached the server in one read (one write).
    groups = [read for read in piped.reads if read.startswith(b"MAIL") and b"DATA\r\n" in read]
    assert len(groups) > 50
    assert not any(read.startswith(b"MAIL") and b"DATA" not in read for read in piped.reads)


def test_a_354_after_every_recipient_was_refused_gets_a_lone_dot() -> None:
    """RFC 2920 3.1: the client cannot assume DATA fails when no RCPT worked; a server that
    answers 354 anyway gets an empty message ended by a dot, and nothing is delivered."""

    async def go() -> tuple[SendResult, SendResult, Chunky]:
        server = Chunky(random.Random(5), pipelining=True)
        await server.start()
        session = await SmtpSession.open(resolved(server.config()), transcript=Transcript())
        first = await session.send("d354any@example.com", ["r550@example.org"], MESSAGE)
        second = await session.send("ok@example.com", ["r250@example.org"], MESSAGE)
        await session.close()
        return first, second, server

    first, second, server = run_in("uvloop", go())
    assert first.outcome is Outcome.PERMANENT and first.step == "rcpt_to"
    assert first.recipients["r550@example.org"].reply.code == 550  # type: ignore[union-attr]
    assert second.outcome is Outcome.DELIVERED  # the session went on in step
    assert server.received[0] == ([], b"")  # the lone dot: no recipient, no content
    assert server.received[1][0] == ["r250"]


def test_a_421_in_the_middle_of_the_group(smtp_servers: SmtpServers) -> None:
    """aiosmtpd answers the second RCPT with 421 and closes: the first recipient is not
    sent (DATA cannot follow), everyone is temporary, and the session is not reused."""
    server = smtp_servers.start()
    server.fail("RCPT", "250 2.1.5 first is fine")
    server.fail("RCPT", "421 4.7.0 too busy, closing", times=None)

    async def go() -> tuple[SendResult | TransportError, bool, Transcript]:
        transcript = Transcript()
        session = await SmtpSession.open(resolved(server.config()), transcript=transcript)
        try:
            result: SendResult | TransportError = await session.send(
                "a@example.com",
                ["one@example.org", "two@example.org", "three@example.org"],
                MESSAGE,
            )
        except TransportError as err:
            result = err
        usable = session.usable
        await session.close()
        return result, usable, transcript

    result, usable, transcript = run_in("uvloop", go())
    assert isinstance(result, TransportError)
    assert result.outcome is Outcome.TEMPORARY and result.step == "data"
    assert not usable
    assert server.count == 0
    # The whole group went out before the first reply came back.
    lines = [line for line in transcript.lines if line[:2] in ("C:", "S:")]
    start = next(i for i, line in enumerate(lines) if line.startswith("C: MAIL"))
    assert [line[:7] for line in lines[start : start + 5]] == [
        "C: MAIL",
        "C: RCPT",
        "C: RCPT",
        "C: RCPT",
        "C: DATA",
    ]
    assert "S: 421 4.7.0 too busy, closing" in transcript.lines


def test_refusals_in_the_middle_over_starttls(smtp_servers: SmtpServers) -> None:
    """aiosmtpd over STARTTLS (the reader is swapped in on the TLS transport): the middle
    recipient is refused, the others get the message in one pipelined transaction, then a
    second message on the same session."""
    server = smtp_servers.start(tls="starttls", users={"alice": "pw-123456"})
    server.refuse("bad@example.org", "550 5.1.1 no such user here")

    async def go() -> tuple[list[SendResult], Transcript]:
        transcript = Transcript()
        session = await SmtpSession.open(
            resolved(server.password_config("alice", "pw-123456")), transcript=transcript
        )
        out = [
            await session.send(
                "a@example.com", ["x@example.org", "bad@example.org", "y@example.org"], MESSAGE
            ),
            await session.send("a@example.com", ["z@example.org"], MESSAGE),
        ]
        await session.close()
        return out, transcript

    for loop_name in LOOPS:
        (first, second), transcript = run_in(loop_name, go())
        assert first.outcome is Outcome.PERMANENT and first.step == "data"
        assert first.delivered == ["x@example.org", "y@example.org"]
        assert first.permanent == ["bad@example.org"]
        assert first.recipients["bad@example.org"].reply.code == 550  # type: ignore[union-attr]
        assert second.outcome is Outcome.DELIVERED
        assert any("TLS established" in line for line in transcript.lines)
    got = server.wait_for(4)
    assert sorted(got[0].rcpt_tos) == ["x@example.org", "y@example.org"]
    assert got[0].content.endswith(b"hello\r\n.dot\r\n")  # dot-stuffing undone by the server
    assert got[1].rcpt_tos == ["z@example.org"]


def test_a_hanging_reply_in_the_group_times_out_in_its_step(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    server.fail("RCPT", "hang")

    async def go() -> TransportError:
        session = await SmtpSession.open(
            resolved(server.config(timeouts={"connect_s": 5, "command_s": 1})),
            transcript=Transcript(),
        )
        try:
            await session.send("a@example.com", ["x@example.org"], MESSAGE)
        except TransportError as err:
            return err
        finally:
            await session.close()
        raise AssertionError("no timeout")

    err = run_in("uvloop", go())
    assert err.outcome is Outcome.TEMPORARY and err.step == "rcpt_to"
    assert server.count == 0
