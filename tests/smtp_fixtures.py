"""Real SMTP servers for tests: aiosmtpd on 127.0.0.1, ephemeral ports, trustme certificates.

Use the ``smtp_servers`` fixture (tests/conftest.py)::

    server = smtp_servers.start(tls="starttls", users={"alice": "pw"})
    server.fail("RCPT", "451 4.3.0 try again later")     # scripted fault, once
    server.refuse("nobody@example.org", "550 5.1.1 no such user")
    body = server.config(authentication={...})             # an e-mail server config body
    ...
    [msg] = server.wait_for(1)                             # envelope + parsed message

All servers of a test session share one event loop in a background thread; every server a
test starts is stopped (with its open connections) when the test ends.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import functools
import json
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal, TypeVar

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets

HOST = "127.0.0.1"
T = TypeVar("T")
TlsMode = Literal["none", "starttls", "implicit"]
CertKind = Literal["good", "self_signed", "wrong_host", "expired"]
XOAuth2Style = Literal["microsoft", "google"]
# Exactly what the providers answer to a rejected XOAUTH2 token or password (Microsoft:
# "Authenticate an IMAP, POP or SMTP connection using OAuth"; Google: "OAuth 2.0 Mechanism").
MICROSOFT_535 = "535 5.7.3 Authentication unsuccessful [XX1P123CA0001.mailgate.test]"
GOOGLE_535 = (
    "535-5.7.8 Username and Password not accepted. For more information, go to\r\n"
    "535 5.7.8  https://support.google.com/mail/?p=BadCredentials"
)


class LoopThread:
    """One asyncio loop in a daemon thread, hosting every test SMTP server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Pki:
    """Certificates: a server CA, a client CA and the odd ones (self-signed, expired)."""

    ca: trustme.CA
    client_ca: trustme.CA
    good: trustme.LeafCert
    wrong_host: trustme.LeafCert
    client: trustme.LeafCert
    self_signed_cert_pem: bytes
    self_signed_key_pem: bytes
    expired: trustme.LeafCert

    @classmethod
    def create(cls) -> Pki:
        ca = trustme.CA(organization_name="mailgate test CA")
        client_ca = trustme.CA(organization_name="mailgate test client CA")
        cert, key = _self_signed(HOST)
        return cls(
            ca=ca,
            client_ca=client_ca,
            good=ca.issue_cert(HOST, "localhost"),
            wrong_host=ca.issue_cert("mail.elsewhere.test"),
            client=client_ca.issue_cert("mailgate-client.test"),
            self_signed_cert_pem=cert,
            self_signed_key_pem=key,
            expired=ca.issue_cert(HOST, not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1)),
        )

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()

    @property
    def client_cert_pem(self) -> str:
        return b"".join(b.bytes() for b in self.client.cert_chain_pems).decode()

    @property
    def client_key_pem(self) -> str:
        return self.client.private_key_pem.bytes().decode()

    def server_context(self, kind: CertKind, require_client_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if kind == "self_signed":
            _load_chain(ctx, self.self_signed_cert_pem, self.self_signed_key_pem)
        else:
            leaf = {"good": self.good, "wrong_host": self.wrong_host, "expired": self.expired}[kind]
            leaf.configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.client_ca.configure_trust(ctx)
        return ctx


def _load_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        c, k = Path(tmp, "c.pem"), Path(tmp, "k.pem")
        c.write_bytes(cert)
        k.write_bytes(key)
        ctx.load_cert_chain(c, k)


def _self_signed(host: str) -> tuple[bytes, bytes]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    content: bytes
    login: str | None
    tls: bool

    @functools.cached_property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Fault:
    """What to do instead of handling a command: reply, disconnect, hang, or (DATA only)
    ``disconnect_mid_data`` (answer 354, read a little, drop the connection)."""

    action: str  # "reply" | "disconnect" | "hang" | "disconnect_mid_data" | "delay"
    reply: str = ""
    times: int | None = 1  # None: every time
    delay_s: float = 0.0


@dataclass
class SmtpServer:
    """One running test server and what it saw."""

    name: str
    tls: TlsMode
    pki: Pki | None
    users: dict[str, str]
    xoauth2_check: Callable[[str, str], bool] | None
    xoauth2_style: XOAuth2Style
    offer_auth: bool
    keep_messages: bool = True
    pipelining: bool = True
    host: str = HOST
    port: int = 0
    received: list[ReceivedMessage] = field(default_factory=list)
    count: int = 0
    commands: list[str] = field(default_factory=list)
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _server: asyncio.AbstractServer | None = None
    _protocols: list[SMTP] = field(default_factory=list)

    # ---- scripting ------------------------------------------------------------------------

    def fail(self, command: str, reply: str = "", *, times: int | None = 1) -> None:
        """Make ``command`` (MAIL, RCPT, DATA, EHLO, AUTH, STARTTLS, QUIT, RSET; ``CONNECT``
        for the greeting; ``DATA_END`` for the reply after the content) answer ``reply``
        instead; or pass
        ``disconnect``, ``hang`` or ``disconnect_mid_data`` as the reply to do that."""
        action = reply if reply in ("disconnect", "hang", "disconnect_mid_data") else "reply"
        self.faults.setdefault(command.upper(), []).append(Fault(action, reply, times))

    def delay_data_end(self, seconds: float, *, times: int | None = 1, then: str = "reply") -> None:
        """Take the message (it counts as received), then answer the final dot only after
        ``seconds``; ``then="disconnect"`` hangs up instead of answering."""
        self.faults.setdefault("DATA_END", []).append(Fault("delay", then, times, seconds))

    def refuse(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        self.refusals[address.lower()] = reply

    def take_fault(self, command: str) -> Fault | None:
        queue = self.faults.get(command)
        if not queue:
            return None
        fault = queue[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
        return fault

    # ---- observing ------------------------------------------------------------------------

    def wait_for(self, n: int = 1, timeout: float = 10) -> list[ReceivedMessage]:
        """Block until ``n`` messages arrived (or fail the test)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= n, timeout):
                raise AssertionError(f"{self.name}: {self.count} of {n} messages arrived")
            return list(self.received)

    def record(self, msg: ReceivedMessage) -> None:
        with self._cond:
            self.count += 1
            if self.keep_messages:
                self.received.append(msg)
            self._cond.notify_all()

    # ---- configuration bodies ---------------------------------------------------------------

    def config(self, name: str = "DEFAULT", **overrides: Any) -> dict[str, Any]:
        """An e-mail server configuration body (as POSTed to .../email-servers) pointing at this
        server."""
        body: dict[str, Any] = {
            "name": name,
            "protocol": "smtps" if self.tls == "implicit" else "smtp",
            "host": self.host,
            "port": self.port,
            "starttls": "required" if self.tls == "starttls" else "disabled",
            "helo_name": "client.mailgate.test",
            "timeouts": {"connect_s": 5, "command_s": 5},
            "message_defaults": {
                "from_address": "noreply@example.com",
                "from_name": "Mailgate Test",
                "reply_to": "help@example.com",
            },
        }
        if self.tls != "none" and self.pki is not None:
            body["tls"] = {"verify": True, "ca_certificates_pem": self.pki.ca_pem}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(body.get(key), dict):
                body[key] = {**body[key], **value}
            else:
                body[key] = value
        return body

    def password_config(self, user: str, password: str, **overrides: Any) -> dict[str, Any]:
        auth = {"method": "password", "username": user, "password": password}
        return self.config(authentication=auth, **overrides)


def resolved(body: dict[str, Any], **secrets: str) -> ResolvedServer:
    """A ``ResolvedServer`` straight from a config body (for transport-level tests)."""
    cfg = EmailServerIn.model_validate(body)
    found = cfg.secrets()
    found.update(secrets)
    return ResolvedServer(0, None, cfg.name, cfg, ServerSecrets.from_dict(found))


class _Handler:
    """aiosmtpd handler: records messages, applies refusals, filters EHLO, does XOAUTH2."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.server.offer_auth:
            responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        if self.server.pipelining:
            # aiosmtpd reads one command line after another, so it handles a pipelined
            # group (RFC 2920) correctly; it just does not say so.
            responses = [responses[0], "250-PIPELINING", *responses[1:]]
        return responses

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.server.refusals.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self.server.take_fault("DATA_END")
        if fault is not None and fault.action != "delay":
            return fault.reply
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else auth
        self.server.record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                mail_options=list(envelope.mail_options),
                content=bytes(envelope.original_content or b""),
                login=login if isinstance(login, str) else None,
                tls=session.ssl is not None or self.server.tls == "implicit",
            )
        )
        if fault is not None:
            await asyncio.sleep(fault.delay_s)
            if fault.reply == "disconnect":
                assert smtp.transport is not None
                smtp.transport.close()
        return "250 2.0.0 OK queued as 42"

    async def auth_XOAUTH2(self, smtp: SMTP, args: list[str]) -> AuthResult:
        check = self.server.xoauth2_check
        if len(args) < 2:
            return AuthResult(success=False, handled=False, message="501 5.5.2 need a payload")
        try:
            raw = base64.b64decode(args[1], validate=True).decode()
            fields = dict(part.split("=", 1) for part in raw.split("\x01") if part)
            user, bearer = fields["user"], fields["auth"]
        except (ValueError, KeyError):
            return AuthResult(success=False, handled=False, message="501 5.5.2 bad payload")
        token = bearer.removeprefix("Bearer ")
        self.server.auth_attempts.append(("XOAUTH2", user))
        if check is not None and check(user, token):
            return AuthResult(success=True, auth_data=user, handled=False)
        if self.server.xoauth2_style == "google":
            # https://developers.google.com/gmail/imap/xoauth2-protocol#error_response_2
            challenge = json.dumps(
                {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
            )
            await smtp.challenge_auth(challenge.encode())
            return AuthResult(success=False, handled=False, message=GOOGLE_535)
        return AuthResult(success=False, handled=False, message=MICROSOFT_535)


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP with scripted faults in front of every command."""

    def __init__(self, handler: _Handler, owner: SmtpServer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._wrap(name, method)

    def _wrap(self, name: str, method: Callable[[str], Any]) -> Callable[[str], Any]:
        @functools.wraps(method)
        async def run(arg: str) -> None:
            shown = name if name == "AUTH" else f"{name} {arg or ''}".strip()
            self.owner.commands.append(shown)
            fault = self.owner.take_fault(name)
            if fault is None:
                await method(arg)
            elif fault.action == "reply":
                await self.push(fault.reply)
            elif fault.action == "disconnect":
                assert self.transport is not None
                self.transport.close()
            elif fault.action == "disconnect_mid_data":
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                await self._reader.readline()
                assert self.transport is not None
                self.transport.close()
            else:  # hang
                await asyncio.sleep(3600)

        return run

    async def _handle_client(self) -> None:
        # "CONNECT" scripts the greeting: e.g. "421 4.7.0 too many connections", "hang".
        fault = self.owner.take_fault("CONNECT")
        if fault is None:
            await super()._handle_client()
        elif fault.action == "reply":
            await self.push(fault.reply)
            assert self.transport is not None
            self.transport.close()
        elif fault.action == "hang":
            await asyncio.sleep(3600)
        else:
            assert self.transport is not None
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.owner._protocols.append(self)
        super().connection_made(transport)


class SmtpServers:
    """Starts servers for one test and stops them all at its end."""

    def __init__(self, loop: LoopThread, pki: Pki) -> None:
        self.loop = loop
        self.pki = pki
        self.servers: list[SmtpServer] = []
        self.sockets: list[socket.socket] = []

    def start(
        self,
        *,
        tls: TlsMode = "none",
        cert: CertKind = "good",
        require_client_cert: bool = False,
        users: dict[str, str] | None = None,
        xoauth2: Callable[[str, str], bool] | None = None,
        xoauth2_style: XOAuth2Style = "microsoft",
        offer_auth: bool = True,
        mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        auth_require_tls: bool = True,
        auth_required: bool = False,
        require_starttls: bool = False,
        size_limit: int | None = 10 * 1024 * 1024,
        smtputf8: bool = True,
        keep_messages: bool = True,
        pipelining: bool = True,
        name: str = "smtp",
    ) -> SmtpServer:
        users = dict(users or {})
        server = SmtpServer(
            name=name,
            tls=tls,
            pki=self.pki,
            users=users,
            xoauth2_check=xoauth2,
            xoauth2_style=xoauth2_style,
            offer_auth=offer_auth,
            keep_messages=keep_messages,
            pipelining=pipelining,
        )
        ctx = None if tls == "none" else self.pki.server_context(cert, require_client_cert)
        handler = _Handler(server)
        excluded = [m for m in ("PLAIN", "LOGIN") if m not in mechanisms]
        if xoauth2 is None:
            excluded.append("XOAUTH2")

        def authenticator(
            smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            assert isinstance(data, LoginPassword)
            login, password = data.login.decode(), data.password.decode()
            server.auth_attempts.append((mechanism, login))
            if users.get(login) == password:
                return AuthResult(success=True, auth_data=data)
            return AuthResult(success=False, handled=False)

        def factory() -> SMTP:
            return _FaultySMTP(
                handler,
                server,
                hostname="mx.mailgate.test",
                data_size_limit=size_limit,
                enable_SMTPUTF8=smtputf8,
                tls_context=ctx if tls == "starttls" else None,
                require_starttls=require_starttls,
                # aiosmtpd does not see implicit TLS as TLS; the connection is encrypted.
                auth_require_tls=auth_require_tls and tls != "implicit",
                auth_required=auth_required,
                auth_exclude_mechanism=excluded,
                authenticator=authenticator,
                timeout=30,
                loop=self.loop.loop,
            )

        async def serve() -> asyncio.AbstractServer:
            return await self.loop.loop.create_server(
                factory, host=HOST, port=0, ssl=ctx if tls == "implicit" else None
            )

        server._server = self.loop.run(serve())
        server.port = server._server.sockets[0].getsockname()[1]
        self.servers.append(server)
        return server

    def silent_port(self) -> int:
        """A port that accepts TCP connections but never says a word (no greeting)."""
        sock = socket.socket()
        sock.bind((HOST, 0))
        sock.listen(8)
        self.sockets.append(sock)
        port: int = sock.getsockname()[1]
        return port

    def closed_port(self) -> int:
        """A port nothing listens on (connection refused)."""
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        return port

    def close(self) -> None:
        async def stop(server: SmtpServer) -> None:
            if server._server is not None:
                server._server.close()
            for proto in server._protocols:
                if proto.transport is not None:
                    proto.transport.close()
                if proto._handler_coroutine is not None:
                    proto._handler_coroutine.cancel()

        for server in self.servers:
            self.loop.run(stop(server))
        for sock in self.sockets:
            sock.close()
