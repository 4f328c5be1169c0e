"""The remote client agent: ``mailgate agent --url URL --token TOKEN``.

It runs inside a customer's network, connects *out* to mailgate over a WebSocket (no inbound
port, no database), receives the jobs of configurations whose ``remote_output`` names it,
performs them with mailgate's own SMTP transport, and reports each outcome. After any drop it
reconnects with exponential backoff and jitter. The frames are described in
``mailgate.schemas.remote``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import logging
import random
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import websockets
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from mailgate import __version__
from mailgate.adapters.remote.codec import (
    StaticToken,
    as_dict,
    encode_send_result,
    encode_transport_error,
    resolved_from_spec,
    scrub,
    secrets_in,
)
from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.session import SmtpSession
from mailgate.adapters.smtp.transport import SmtpTransport
from mailgate.domain.clock import utcnow
from mailgate.schemas.remote import (
    CLOSE_NOT_ALLOWED,
    CLOSE_TOKEN_REVOKED,
    Deliver,
    Heartbeat,
    Hello,
    Result,
    ServerTest,
    ServerTestResult,
    Welcome,
)

log = logging.getLogger("mailgate.agent")
CONNECT_PATH = "/api/v1/remote/connect"
EXIT_REFUSED = 2


class JobRunner(Protocol):
    """What the agent does with a job. The real one drives the SMTP transport."""

    async def deliver(self, job: Deliver) -> dict[str, Any]: ...

    async def test(self, job: ServerTest) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AgentOptions:
    url: str
    token: str
    ca_file: Path | None = None
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_frame_bytes: int = 64 * 1024 * 1024
    open_timeout_s: float = 15.0
    allow_http: bool = False
    """Allow plain ``http://`` (``ws://``) to a host other than this machine."""


class AgentRefused(Exception):
    """The server will never accept this token (deleted or wrong): retrying cannot help."""


def websocket_url(url: str) -> str:
    """``https://host[/prefix]`` -> ``wss://host[/prefix]/api/v1/remote/connect``."""
    parts = urlsplit(url.strip())
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError("the URL must be an absolute http(s):// or ws(s):// URL")
    path = parts.path.rstrip("/")
    if not path.endswith(CONNECT_PATH):
        path += CONNECT_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def check_transport_security(url: str, allow_http: bool) -> None:
    """Jobs carry SMTP passwords and access tokens: plain ws:// only to this machine (e.g. a
    TLS-terminating proxy beside the agent), or when explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme == "wss" or allow_http:
        return
    host = (parts.hostname or "").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(
            "refusing plain http:// to another machine: jobs carry SMTP credentials; use "
            "https:// (or --allow-http on a network you trust)"
        )


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trust store (plus ``ca_file``), with host name checks: always verified."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, so that many agents
    dropped at once by a restart of mailgate do not reconnect in lockstep."""
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, 30))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class Agent:
    def __init__(
        self,
        options: AgentOptions,
        runner: JobRunner,
    ) -> None:
        self.options = options
        self.runner = runner
        self.url = websocket_url(options.url)
        check_transport_security(self.url, options.allow_http)
        self._ssl = ssl_context(options.ca_file) if self.url.startswith("wss:") else None

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Connect and serve until ``stop`` is set (0) or the token is refused (2)."""
        try:
            return await self._run(stop or asyncio.Event())
        finally:
            close = getattr(self.runner, "close", None)
            if close is not None:
                await close()

    async def _run(self, stop: asyncio.Event) -> int:
        attempt = 0
        while not stop.is_set():
            try:
                served = await self._connect_and_serve(stop)
                attempt = 0 if served else attempt + 1
            except AgentRefused as exc:
                log.error("mailgate refused this agent: %s; stopping", exc)
                return EXIT_REFUSED
            except InvalidStatus as exc:
                status, detail = _refusal(exc)
                if status == 401:
                    log.error("mailgate refused the token (401: %s); stopping", detail)
                    return EXIT_REFUSED
                log.warning("mailgate refused the connection (%s: %s)", status, detail)
                attempt += 1
            except ssl.SSLCertVerificationError as exc:
                log.error(
                    "the server certificate of %s is not trusted (%s); give its CA with "
                    "--ca-file if it is a private one",
                    self.url,
                    exc.verify_message,
                )
                attempt += 1
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                log.warning("cannot connect to %s: %s", self.url, exc or type(exc).__name__)
                attempt += 1
            if stop.is_set():
                break
            delay = backoff_delay(
                attempt, self.options.backoff_initial_s, self.options.backoff_max_s
            )
            log.info("reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        log.info("agent stopped")
        return 0

    async def _connect_and_serve(self, stop: asyncio.Event) -> bool:
        """One connection. True when it got as far as the welcome (resets the backoff)."""
        log.info("connecting to %s", self.url)
        async with websockets.connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.options.token}"},
            user_agent_header=f"mailgate-agent/{__version__}",
            ssl=self._ssl,
            max_size=self.options.max_frame_bytes,
            open_timeout=self.options.open_timeout_s,
            ping_interval=20,
            ping_timeout=20,
        ) as ws:
            hello = Hello(
                agent_version=__version__,
                hostname=socket.gethostname(),
                max_frame_bytes=self.options.max_frame_bytes,
            )
            await ws.send(hello.model_dump_json())
            try:
                welcome = Welcome.model_validate_json(
                    await asyncio.wait_for(ws.recv(), self.options.open_timeout_s)
                )
            except ValidationError:
                log.error("the server did not answer with a welcome frame; is this mailgate?")
                return False
            log.info(
                "connected as remote client %s of tenant %s (heartbeat every %g s)",
                welcome.client,
                welcome.tenant,
                welcome.heartbeat_s,
            )
            await self._serve(ws, welcome, stop)
            return True

    async def _serve(self, ws: ClientConnection, welcome: Welcome, stop: asyncio.Event) -> None:
        jobs: set[asyncio.Task[None]] = set()
        heartbeat = asyncio.create_task(self._heartbeats(ws, welcome.heartbeat_s))
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                receiver = asyncio.create_task(ws.recv())
                done, _ = await asyncio.wait(
                    {receiver, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopper in done:
                    receiver.cancel()
                    await ws.close(1001, "agent stopping")
                    return
                try:
                    text = receiver.result()
                except ConnectionClosed as exc:
                    self._closed(exc)
                    return
                task = asyncio.create_task(self._handle(ws, text))
                jobs.add(task)
                task.add_done_callback(jobs.discard)
        finally:
            heartbeat.cancel()
            stopper.cancel()
            # Jobs whose result can no longer be reported are abandoned: mailgate hands the
            # message out again (at-least-once).
            for task in list(jobs):
                task.cancel()

    def _closed(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else ""
        if code == CLOSE_TOKEN_REVOKED:
            raise AgentRefused(reason or "this remote client was deleted")
        if code == CLOSE_NOT_ALLOWED:
            log.warning("mailgate switched remote clients off (%s)", reason)
        else:
            log.warning("connection closed (%s %s)", code, reason)

    async def _heartbeats(self, ws: ClientConnection, every_s: float) -> None:
        frame = Heartbeat().model_dump_json()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(every_s)
                await ws.send(frame)

    async def _handle(self, ws: ClientConnection, text: str | bytes) -> None:
        try:
            frame = json.loads(text)
            kind = frame.get("type") if isinstance(frame, dict) else None
        except ValueError:
            kind = None
        reply: str
        try:
            if kind == "deliver":
                job = Deliver.model_validate(frame)
                log.info(
                    "delivering message %s via %s:%s (%d recipient(s))",
                    job.message_id,
                    job.server.config.get("host"),
                    job.server.config.get("port"),
                    len(job.rcpt_to),
                )
                result = await self.runner.deliver(job)
                log.info("message %s: %s", job.message_id, _summary(result))
                reply = Result(id=job.id, result=result).model_dump_json()
            elif kind == "test":
                test = ServerTest.model_validate(frame)
                log.info(
                    "testing %s:%s (%s)",
                    test.server.config.get("host"),
                    test.server.config.get("port"),
                    test.mode,
                )
                result = await self.runner.test(test)
                log.info("test finished: %s", "ok" if result.get("ok") else "failed")
                reply = ServerTestResult(id=test.id, result=result).model_dump_json()
            elif kind == "error":
                log.warning("mailgate reported an error: %s", frame.get("detail"))
                return
            else:
                log.warning("ignoring an unknown frame type %r", kind)
                reply = json.dumps({"type": "error", "detail": f"unknown frame type {kind!r}"})
        except ValidationError as exc:
            job_id = frame.get("id") if isinstance(frame, dict) else None
            log.error("a malformed %s frame: %s", kind, exc.errors()[:1])
            reply = json.dumps({"type": "error", "id": job_id, "detail": f"malformed {kind} frame"})
        with contextlib.suppress(ConnectionClosed):
            await ws.send(reply)


def _refusal(exc: InvalidStatus) -> tuple[int, str]:
    response = exc.response
    detail = ""
    with contextlib.suppress(ValueError, AttributeError):
        detail = str(json.loads(response.body or b"{}").get("detail", ""))
    return response.status_code, detail or response.reason_phrase


def _summary(result: dict[str, Any]) -> str:
    """One log line for a report: the outcome and the server's reply (no secrets in it: the
    transport scrubs them)."""
    if "error" in result:
        return f"not delivered ({result['error']})"
    reply: dict[str, Any] = as_dict(result.get("reply"))
    reply_text = " ".join(
        str(p) for p in (reply.get("code"), reply.get("enhanced"), reply.get("text")) if p
    )
    outcome = result.get("outcome", "?")
    where = f" at {result.get('step')}" if outcome != "delivered" else ""
    return f"{outcome}{where}: {reply_text or result.get('detail') or 'no reply'}"[:300]


class TransportJobRunner:
    """Runs jobs with mailgate's own SMTP transport, in this process.

    A session stays open for ``idle_s`` after a delivery so that a burst of mail for one
    configuration uses one SMTP connection, as the worker does for direct delivery.
    """

    def __init__(self, idle_s: float = 10.0) -> None:
        self.idle_s = idle_s
        self._idle: dict[str, list[tuple[SmtpSession, float]]] = {}
        self._janitor: asyncio.Task[None] | None = None

    async def deliver(self, job: Deliver) -> dict[str, Any]:
        secrets = secrets_in(job.server)
        try:
            server = resolved_from_spec(job.server)
            raw = base64.b64decode(job.raw_b64, validate=True)
        except (ValidationError, binascii.Error, ValueError) as exc:
            return {"error": scrub(f"unusable job: {type(exc).__name__}", secrets)}
        tokens = StaticToken(job.server.access_token) if job.server.access_token else None
        key = hashlib.sha256(job.server.model_dump_json().encode()).hexdigest()
        session = self._take(key)
        try:
            if session is None:
                session = await SmtpSession.open(server, token_provider=tokens)
            result = await session.send(job.mail_from, job.rcpt_to, raw)
        except TransportError as err:
            if session is not None:
                await session.close()
            return encode_transport_error(err)
        except Exception as exc:  # the transport classifies; anything else is retried
            log.exception("delivery of %s failed unexpectedly", job.message_id)
            if session is not None:
                await session.close()
            return {"error": scrub(f"agent error: {type(exc).__name__}", secrets)}
        if session.usable:
            self._give_back(key, session)
        else:
            await session.close()
        return encode_send_result(result)

    async def test(self, job: ServerTest) -> dict[str, Any]:
        from mailgate.services.diagnosis.run import run_test

        tokens = StaticToken(job.server.access_token) if job.server.access_token else None
        server = resolved_from_spec(job.server)
        diagnosis = await run_test(
            server,
            prober=SmtpTransport(),
            to=job.to,
            mode=job.mode,
            label=f"{server.name} via remote client",
            clock=utcnow,
            token_provider=tokens,
        )
        return diagnosis.as_dict()

    def _take(self, key: str) -> SmtpSession | None:
        pool = self._idle.get(key, [])
        while pool:
            session, _since = pool.pop()
            if session.usable:
                return session
        return None

    def _give_back(self, key: str, session: SmtpSession) -> None:
        self._idle.setdefault(key, []).append((session, time.monotonic()))
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.create_task(self._close_idle())

    async def _close_idle(self) -> None:
        while any(self._idle.values()):
            await asyncio.sleep(self.idle_s / 2)
            cutoff = time.monotonic() - self.idle_s
            expired: list[SmtpSession] = []
            for key, pool in self._idle.items():  # no await in here: _take may run between
                expired += [s for s, since in pool if since <= cutoff or not s.usable]
                self._idle[key] = [(s, t) for s, t in pool if t > cutoff and s.usable]
            for session in expired:
                await session.close()

    async def close(self) -> None:
        for pool in self._idle.values():
            for session, _t in pool:
                await session.close()
        self._idle.clear()
        if self._janitor is not None:
            self._janitor.cancel()
