"""One SMTP connection that can carry many messages, on aiosmtplib::

    session = await SmtpSession.open(server, token_provider=tokens, transcript=Transcript())
    result = await session.send("a@example.com", ["b@example.org"], raw_bytes)
    if not session.usable: ...   # the server dropped us (e.g. after a 421); open a new one
    await session.close()

Classification happens once, here: a 2xx is delivered, a 4xx reply, a lost connection or a
timeout is temporary, a 5xx reply is permanent; per recipient when some are refused. TLS
problems and a refused login (even a 535) are temporary: they are about the configuration,
not the message. The caller alone decides whether to retry, hold or fail.

- ``SmtpSession.open`` raises ``TransportError`` (with the step, the reply and a
  ``FailureKind``) when no usable session could be set up.
- ``SmtpSession.send`` returns a ``SendResult`` whenever the server answered about the
  message (even with a refusal); it raises ``TransportError`` when the connection broke or
  timed out before an answer (then ``usable`` is false).

Secrets never leave this package in clear: the transcript redacts AUTH payloads, and every
recorded line, step detail and error detail is scrubbed of the password and tokens.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiosmtplib
from aiosmtplib.auth import auth_plain_encode

from mailgate.adapters.outbound import AddrInfo, DestinationDenied, allowed
from mailgate.adapters.smtp.auth import authenticate
from mailgate.adapters.smtp.errors import TransportError, find_cause, translate
from mailgate.adapters.smtp.pipelining import send_pipelined
from mailgate.adapters.smtp.replies import SendResult, SmtpReply
from mailgate.adapters.smtp.tls import build_tls_context
from mailgate.adapters.smtp.transaction import Broken, MailTransactions, ms_since
from mailgate.adapters.smtp.transcript import Transcript
from mailgate.adapters.smtp.wire import RecordingSMTP
from mailgate.domain.messages import Outcome
from mailgate.domain.outbound import OutboundPolicy
from mailgate.domain.transport import FailureKind, Step
from mailgate.ports import TokenProvider

if TYPE_CHECKING:
    from mailgate.schemas.email_server import ResolvedServer

STEPS = ("resolve", "connect", "tls", "ehlo", "auth", "mail_from", "rcpt_to", "data")
"""The steps a session reports, in order (README "Test an e-mail server")."""


async def _connect_socket(infos: Sequence[AddrInfo], timeout_s: float) -> tuple[socket.socket, str]:
    """A TCP connection to the first of ``infos`` that accepts one, within ``timeout_s`` in
    all; the last failure is raised when none does."""
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    async with asyncio.timeout(timeout_s):
        for family, type_, proto, _name, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock, str(sockaddr[0])
    assert error is not None
    raise error


def bare_host(host: str | None) -> str:
    """``[2001:db8::1]`` (RFC 3986 style, accepted by the schema) -> ``2001:db8::1``. An SMTP
    configuration always has a host (the schema requires it for transport smtp)."""
    host = host or ""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@functools.cache
def default_helo_name() -> str:
    return socket.getfqdn()


class _StepFailed(Exception):
    def __init__(self, error: TransportError) -> None:
        super().__init__(error.detail)
        self.error = error


@dataclass
class _StepState:
    detail: str = ""


@dataclass
class SmtpSession:
    """One open SMTP connection; create it with ``await SmtpSession.open(...)``."""

    server: ResolvedServer
    smtp: RecordingSMTP
    transcript: Transcript
    steps: list[Step] | None
    token_provider: TokenProvider | None = None
    policy: OutboundPolicy = field(default_factory=OutboundPolicy)
    warnings: list[str] = field(default_factory=list)
    tls_info: str | None = None
    _broken: bool = False
    _tls_fresh: bool = False
    _mail: MailTransactions = field(init=False)

    def __post_init__(self) -> None:
        self._mail = MailTransactions(
            self.smtp,
            self.transcript,
            self._record,
            pipelined=send_pipelined,
            data_done_s=self.server.config.timeouts.data_done_s,
        )

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        server: ResolvedServer,
        *,
        token_provider: TokenProvider | None = None,
        transcript: Transcript | None = None,
        steps: list[Step] | None = None,
        policy: OutboundPolicy | None = None,
    ) -> SmtpSession:
        """Connect, secure, greet and authenticate; raise ``TransportError`` on failure.

        ``steps`` (optional) receives a ``Step`` for resolve, connect, tls, ehlo and auth,
        and later for mail_from, rcpt_to and data of every ``send``. ``policy``: the
        outbound destination policy (default: link-local denied), checked on the resolved
        addresses; the connection goes to a checked address, never to the name again.
        """
        cfg = server.config
        transcript = transcript if transcript is not None else Transcript()
        transcript.add_secret(server.secrets.password)
        transcript.add_secret(server.secrets.client_secret)
        transcript.add_secret(server.secrets.client_key_pem)
        if cfg.authentication.method == "password" and cfg.authentication.username:
            transcript.add_secret(
                auth_plain_encode(
                    cfg.authentication.username, server.secrets.password or ""
                ).decode()
            )
        smtp = RecordingSMTP(
            transcript,
            hostname=bare_host(cfg.host),
            port=cfg.port or (465 if cfg.protocol == "smtps" else 587),
            # getfqdn() may wait for a reverse DNS lookup: off the event loop, once.
            local_hostname=cfg.helo_name or await asyncio.to_thread(default_helo_name),
            timeout=cfg.timeouts.command_s,
            use_tls=False,
            start_tls=False,
        )
        session = cls(
            server=server,
            smtp=smtp,
            transcript=transcript,
            steps=steps,
            token_provider=token_provider,
            policy=policy or OutboundPolicy(),
        )
        try:
            await session._open()
        except _StepFailed as failed:
            smtp.close()
            raise failed.error from failed.error.__cause__
        except BaseException:
            smtp.close()
            raise
        return session

    def _record(self, step: Step) -> None:
        if self.steps is not None:
            self.steps.append(step)

    @contextmanager
    def _step(self, name: str, *, record_success: bool = True) -> Iterator[_StepState]:
        started = time.monotonic()
        state = _StepState()
        try:
            yield state
        except TransportError as err:
            err.detail = self.transcript.scrub(err.detail)
            self._record(Step(name, False, ms_since(started), err.detail))
            raise _StepFailed(err) from err
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
            translated = self._translate(name, exc)
            translated.detail = self.transcript.scrub(translated.detail)
            self._record(Step(translated.step, False, ms_since(started), translated.detail))
            raise _StepFailed(translated) from exc
        if record_success:
            self._record(Step(name, True, ms_since(started), self.transcript.scrub(state.detail)))

    def _translate(
        self, step: str, exc: BaseException, *, after_dot: bool = False
    ) -> TransportError:
        cfg = self.server.config
        limit_s = cfg.timeouts.connect_s if step == "connect" else cfg.timeouts.command_s
        err = translate(
            step,
            exc,
            where=f"{cfg.host}:{cfg.port}",
            limit_s=cfg.timeouts.data_done_s if after_dot else limit_s,
            fresh_tls=self._tls_fresh or (step == "connect" and cfg.protocol == "smtps"),
        )
        if after_dot and err.outcome is Outcome.TEMPORARY:
            # The whole message went out; without a reply nobody knows whether the server
            # took it (RFC 5321 6.1: it may have). Retried late, flagged.
            err.possibly_delivered = True
            err.detail = f"no reply to the end of the message: {err.detail}"
        return err

    async def _open(self) -> None:
        cfg = self.server.config
        host, port = bare_host(cfg.host), cfg.port or (465 if cfg.protocol == "smtps" else 587)
        loop = asyncio.get_running_loop()
        with self._step("resolve") as st:
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    cfg.timeouts.connect_s,
                )
            except socket.gaierror as exc:
                raise TransportError(
                    Outcome.TEMPORARY,
                    "resolve",
                    f"cannot resolve {host!r}: {exc.strerror}",
                    kind=FailureKind.DNS,
                ) from exc
            except TimeoutError as exc:
                raise TransportError(
                    Outcome.TEMPORARY,
                    "resolve",
                    f"resolving {host!r} took longer than {cfg.timeouts.connect_s:g} s",
                    kind=FailureKind.DNS,
                ) from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            st.detail = f"{host} -> {', '.join(addresses[:4])}"

        tls_context: ssl.SSLContext | None = None
        if cfg.protocol == "smtps" or cfg.starttls != "disabled":
            with self._step("tls", record_success=False):
                try:
                    tls_context = build_tls_context(cfg.tls, self.server.secrets.client_key_pem)
                except (ssl.SSLError, ValueError, OSError) as exc:
                    reason = getattr(exc, "reason", None) or type(exc).__name__
                    raise TransportError(
                        Outcome.TEMPORARY,
                        "tls",
                        f"the TLS settings cannot be used ({reason})",
                        kind=FailureKind.TLS_CONFIG,
                    ) from exc
        if tls_context is not None and not cfg.tls.verify:
            self.warnings.append(
                "certificate verification is off (tls.verify: false): anyone on the network "
                "path could impersonate the server and read mail and credentials"
            )

        implicit_tls_started = time.monotonic()
        with self._step("connect") as st:
            try:
                usable = allowed(host, infos, self.policy)
            except DestinationDenied as exc:
                raise TransportError(
                    Outcome.TEMPORARY,
                    "connect",
                    f"not connecting: {exc}",
                    kind=FailureKind.DESTINATION_DENIED,
                ) from None
            sock, address = await _connect_socket(usable, cfg.timeouts.connect_s)
            self.transcript.note(f"connecting to {host}:{port} ({address}, {cfg.protocol})")
            try:
                # The checked address's socket: aiosmtplib must not resolve the name again.
                greeting = await self.smtp.connect(
                    sock=sock,
                    port=None,
                    timeout=cfg.timeouts.connect_s,
                    use_tls=cfg.protocol == "smtps",
                    tls_context=tls_context if cfg.protocol == "smtps" else None,
                    validate_certs=True,
                )
            except aiosmtplib.SMTPConnectResponseError as exc:
                self.transcript.server(exc.code, exc.message)
                if not 200 <= exc.code <= 599:
                    raise TransportError(
                        Outcome.TEMPORARY,
                        "connect",
                        f"{host}:{port} does not answer like an SMTP server",
                        kind=FailureKind.PROTOCOL,
                    ) from None
                reply = SmtpReply.parse(exc.code, exc.message)
                raise TransportError(
                    reply.outcome, "connect", f"greeting refused: {reply}", reply=reply
                ) from exc
            except ssl.SSLError:
                raise
            except aiosmtplib.SMTPConnectError as exc:
                if find_cause(exc, ssl.SSLError) is not None:
                    # TCP worked; the implicit TLS handshake did not: report it under tls.
                    self._record(Step("connect", True, ms_since(implicit_tls_started), "TCP ok"))
                raise
            self.transcript.server(greeting.code, greeting.message)
            st.detail = str(SmtpReply.parse(greeting.code, greeting.message))

        with self._step("tls") as st:
            st.detail = await self._secure(tls_context)
        with self._step("ehlo") as st:
            if self.smtp.is_ehlo_or_helo_needed:
                await self._ehlo()
            self._tls_fresh = False
            st.detail = self._describe_extensions()
            size = self.smtp.esmtp_extensions.get("size", "")
            self._mail.max_size = int(size) if size.isdigit() and int(size) > 0 else None
        with self._step("auth") as st:
            st.detail = await authenticate(
                self.smtp,
                self.server,
                self.token_provider,
                encrypted=self.encrypted,
                warnings=self.warnings,
            )

    async def _ehlo(self) -> None:
        try:
            await self.smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not self.smtp.is_connected:
                raise
            await self.smtp.helo()

    def _describe_extensions(self) -> str:
        ext = self.smtp.esmtp_extensions
        if not ext and self.smtp.last_helo_response is not None:
            return "HELO accepted (no ESMTP extensions)"
        parts = []
        for name, value in ext.items():
            parts.append(f"{name.upper()} {value}".strip() if name != "auth" else "")
        if self.smtp.server_auth_methods:
            parts.append("AUTH " + " ".join(m.upper() for m in self.smtp.server_auth_methods))
        return ", ".join(p for p in parts if p)

    async def _secure(self, tls_context: ssl.SSLContext | None) -> str:
        cfg = self.server.config
        if cfg.protocol == "smtps":
            self.tls_info = self._cipher()
            self.transcript.note(f"TLS established (implicit): {self.tls_info}")
            return f"implicit TLS: {self.tls_info}"
        if cfg.starttls == "disabled":
            self.warnings.append(
                "STARTTLS is disabled: mail"
                + (" and credentials" if cfg.authentication.method != "none" else "")
                + " travel unencrypted"
            )
            return "not used (starttls: disabled)"
        await self._ehlo()
        if not self.smtp.supports_extension("starttls"):
            if cfg.starttls == "required":
                raise TransportError(
                    Outcome.TEMPORARY,
                    "tls",
                    "STARTTLS is required but the server does not offer it",
                    kind=FailureKind.STARTTLS_MISSING,
                )
            self.warnings.append("the server does not offer STARTTLS: the connection is plain")
            return "server offers no STARTTLS; continuing unencrypted (opportunistic)"
        assert tls_context is not None
        try:
            await self.smtp.starttls(
                tls_context=tls_context,
                server_hostname=bare_host(cfg.host),
                timeout=cfg.timeouts.command_s,
            )
        except ssl.SSLError as exc:
            self.transcript.note("TLS handshake failed")
            self.smtp.close()
            raise exc
        self.tls_info = self._cipher()
        self._tls_fresh = True
        self.transcript.note(f"TLS established: {self.tls_info}")
        return f"STARTTLS: {self.tls_info}"

    def _cipher(self) -> str:
        try:
            cipher = self.smtp.get_transport_info("cipher")
        except aiosmtplib.SMTPServerDisconnected:
            return "TLS"
        if not cipher:
            return "TLS"
        name, version, _bits = cipher
        verified = "certificate verified" if self.server.config.tls.verify else "NOT verified"
        return f"{version} {name}, {verified}"

    @property
    def encrypted(self) -> bool:
        return self.tls_info is not None

    @property
    def usable(self) -> bool:
        """False once the connection is gone (closed, broken, or dropped by the server)."""
        return not self._broken and self.smtp.is_connected

    async def send(
        self, mail_from: str, rcpt_to: Sequence[str], message: bytes, *, dry_run: bool = False
    ) -> SendResult:
        """Send one message over this session (see ``SendResult`` for the outcome rules).

        ``dry_run`` stops after RCPT TO and resets the transaction: nothing is sent.
        Raises ``TransportError`` if the connection breaks or times out before an answer.
        """
        recipients = list(dict.fromkeys(rcpt_to))
        if not recipients:
            raise ValueError("no recipients")
        if not self.usable:
            raise TransportError(
                Outcome.TEMPORARY,
                "mail_from",
                "the session is closed",
                kind=FailureKind.DISCONNECTED,
            )
        try:
            return await self._mail.send(mail_from, recipients, message, dry_run=dry_run)
        except asyncio.CancelledError:
            # Stopped in the middle of a transaction (a shutdown whose drain ran out): the
            # server's state is unknown, a polite QUIT would only wait for a server that
            # may not answer (the command timeout, 5 s by default). Drop the connection.
            self._broken = True
            self.smtp.close()
            raise
        except Broken as broken:
            self._broken = True
            self.smtp.close()
            err = self._translate(broken.step, broken.cause, after_dot=broken.after_dot)
            err.detail = self.transcript.scrub(err.detail)
            self._record(Step(broken.step, False, 0, err.detail))
            raise err from broken.cause

    async def close(self) -> None:
        """QUIT politely (bounded by the command timeout), then drop the connection."""
        if self.smtp.is_connected and not self._broken:
            with suppress(aiosmtplib.SMTPException, OSError):
                await self.smtp.quit()
        self._broken = True
        self.smtp.close()
