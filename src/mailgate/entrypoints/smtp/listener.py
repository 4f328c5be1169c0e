"""The SMTP submission listener (README "SMTP submission"), on aiosmtpd.

Applications that only speak SMTP hand their mail to mailgate here. This module speaks the
protocol; the decisions are the services' (``services/submission.py``): AUTH checks the
tenant's API key, ``DATA`` goes through the outbox's raw MIME path and is stored by the same
group commit as the API's submissions (``Container.submissions``) before the ``250``.

It runs on the event loop of the process that starts it: ``mailgate serve`` (uvicorn's loop,
beside the API: on SQLite the group commit writes on that loop, so both must share it) or
``mailgate smtp``. Blocking work never runs on that loop: AUTH (a database transaction that
counts failures) runs in a thread, and so do a message's reads on PostgreSQL and the
parsing of a large message.

aiosmtpd is used through its documented hooks (``handle_*``, ``AuthResult``), plus three
protected members of its ``SMTP`` class, each noted where used: ``_auth_require_tls`` (AUTH
without TLS is allowed from loopback only, decided per connection), ``_reset_timeout``
(the DATA deadline) and ``_authenticate`` (called synchronously by its PLAIN and LOGIN
parsers; the check needs the database, so it is awaited afterwards instead).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AnyStr, cast
from urllib.parse import urlsplit

from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from mailgate.adapters.db.health import is_unavailable
from mailgate.bootstrap import Container
from mailgate.config import Settings
from mailgate.domain.errors import MailgateError, Throttled, Unauthenticated
from mailgate.entrypoints.smtp import replies
from mailgate.schemas.common import normalize_email
from mailgate.services.outbox import Prepared
from mailgate.services.submission import SmtpLogin

log = logging.getLogger("mailgate.smtp")
# aiosmtpd logs every command line at INFO, "AUTH PLAIN <credentials>" included: only its
# warnings may reach the log.
logging.getLogger("mail.log").setLevel(logging.WARNING)

MAX_RECIPIENTS = 1000
"""Recipients of one message (RFC 5321 4.5.3.1.8 asks for at least 100)."""
INLINE_PARSE_BYTES = 256 * 1024
"""On SQLite, messages up to this size are prepared on the event loop (a few indexed reads
of a local file and a parse cost less than the trip to a thread); larger ones in a thread."""
STORE_DEADLINE_S = 60.0
"""How long the connection stays open while a message is being stored (the group commit
gives up on a locked SQLite database after 30 s and the client gets 451)."""
_PENDING = "mailgate:pending"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    implicit_tls: bool
    required: bool = True
    """False for the default listener of ``mailgate serve``: when its port is taken (another
    installation on the machine), serve runs without it and says so; a listener that was
    configured must start or the process does not."""


@dataclass(frozen=True)
class ListenerConfig:
    endpoints: tuple[Endpoint, ...]
    tls: ssl.SSLContext | None
    """Offered by STARTTLS on plain endpoints; used by implicit-TLS endpoints."""
    hostname: str
    max_connections: int
    max_connections_per_client: int
    command_timeout_s: float
    data_timeout_s: float
    max_message_bytes: int


class ConfigError(ValueError):
    """A setting of the listener is unusable (named in the message)."""


def parse_listen(setting: str, value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (port 0: any free port)."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{setting}: expected host:port (or [v6]:port), got {value!r}")
    return host, int(port)


def listener_config(settings: Settings) -> ListenerConfig:
    """The listener's configuration from the settings; ``ConfigError`` names what is wrong."""
    cert, key = settings.smtp_tls_cert_file, settings.smtp_tls_key_file
    tls = None
    if (cert is None) != (key is None):
        raise ConfigError("MAILGATE_SMTP_TLS_CERT_FILE and MAILGATE_SMTP_TLS_KEY_FILE go together")
    if cert is not None and key is not None:
        tls = _server_context(cert, key)
    endpoints = []
    if settings.smtp_listen.strip():
        host, port = parse_listen("MAILGATE_SMTP_LISTEN", settings.smtp_listen)
        endpoints.append(
            Endpoint(host, port, False, required="smtp_listen" in settings.model_fields_set)
        )
    if settings.smtps_listen.strip():
        if tls is None:
            raise ConfigError(
                "MAILGATE_SMTPS_LISTEN needs MAILGATE_SMTP_TLS_CERT_FILE and _KEY_FILE"
            )
        host, port = parse_listen("MAILGATE_SMTPS_LISTEN", settings.smtps_listen)
        endpoints.append(Endpoint(host, port, True))
    return ListenerConfig(
        endpoints=tuple(endpoints),
        tls=tls,
        hostname=urlsplit(settings.public_base_url).hostname or "localhost",
        max_connections=settings.smtp_max_connections,
        max_connections_per_client=settings.smtp_max_connections_per_client,
        command_timeout_s=settings.smtp_command_timeout_s,
        data_timeout_s=settings.smtp_data_timeout_s,
        max_message_bytes=settings.max_message_bytes,
    )


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the SMTP listener's certificate or key does not load: {exc}") from exc
    return ctx


def is_loopback(peer: Any) -> bool:
    try:
        addr = ipaddress.ip_address(peer[0])
    except (TypeError, ValueError, IndexError):
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class SmtpListener:
    """The listening sockets of one process and their connections."""

    def __init__(self, container: Container, config: ListenerConfig) -> None:
        self.c = container
        self.config = config
        self.handler = _Handler(self)
        self.connections: set[_SubmissionSMTP] = set()
        self.per_client: dict[str, int] = {}
        """Open connections per client address."""
        self._servers: list[tuple[Endpoint, asyncio.Server]] = []
        self.accepted = 0
        """Messages answered 250 (tests, progress)."""

    @property
    def addresses(self) -> list[tuple[str, int, bool]]:
        """(host, port, implicit TLS) of every listening socket (the port a 0 became)."""
        found = []
        for endpoint, server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                found.append((host, port, endpoint.implicit_tls))
        return found

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for endpoint in self.config.endpoints:
            implicit = endpoint.implicit_tls

            def factory(implicit: bool = implicit) -> _SubmissionSMTP:
                return _SubmissionSMTP(self, implicit, loop)

            try:
                server = await loop.create_server(
                    factory,
                    host=endpoint.host,
                    port=endpoint.port,
                    ssl=self.config.tls if implicit else None,
                    ssl_handshake_timeout=min(60.0, self.config.command_timeout_s)
                    if implicit
                    else None,
                )
            except OSError as exc:
                if endpoint.required:
                    raise
                log.warning(
                    "SMTP submission is off: %s:%d cannot be used (%s); set "
                    "MAILGATE_SMTP_LISTEN to another address, or to nothing",
                    endpoint.host,
                    endpoint.port,
                    exc.strerror or exc,
                )
                continue
            self._servers.append((endpoint, server))
        for host, port, implicit in self.addresses:
            kind = "implicit TLS" if implicit else ("STARTTLS" if self.config.tls else "no TLS")
            log.info("SMTP submission listening on %s:%d (%s)", host, port, kind)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting; let messages being stored get their reply (up to ``grace_s``);
        then say 421 to every connection and close it."""
        for _endpoint, server in self._servers:
            server.close()
        deadline = time.monotonic() + grace_s
        while any(p.storing for p in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for protocol in list(self.connections):
            protocol.goodbye(replies.SHUTTING_DOWN)
        # Let the closed connections' tasks end (a moment: the transports are closed).
        deadline = time.monotonic() + 1.0
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._servers.clear()


class _SubmissionSMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's protocol with the listener's connection limit, TLS rule and deadlines."""

    def __init__(self, listener: SmtpListener, implicit_tls: bool, loop: Any) -> None:
        cfg = listener.config
        super().__init__(
            listener.handler,
            data_size_limit=cfg.max_message_bytes,
            hostname=cfg.hostname,
            ident="mailgate",
            tls_context=None if implicit_tls else cfg.tls,
            timeout=cfg.command_timeout_s,
            auth_required=True,
            auth_require_tls=True,
            auth_exclude_mechanism=[],
            loop=loop,
        )
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.storing = False
        self._refused = False
        self._counted = False
        self._client = "unknown"

    def _create_session(self) -> Session:
        return _Session(self.loop)

    # ---- connections -----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        if self._original_transport is None:  # a new connection, not the STARTTLS upgrade
            listener = self.listener
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            refusal = None
            if len(listener.connections) >= listener.config.max_connections:
                refusal = replies.TOO_MANY_CONNECTIONS
            elif (
                listener.per_client.get(self._client, 0)
                >= listener.config.max_connections_per_client
            ):
                # One application opening connections in a loop must not take every slot.
                refusal = replies.TOO_MANY_FROM_CLIENT
            if refusal is not None:
                self._refused = True
                transport.write(refusal.encode() + b"\r\n")
                transport.close()
                return
            listener.connections.add(self)
            listener.per_client[self._client] = listener.per_client.get(self._client, 0) + 1
            self._counted = True
            # AUTH needs TLS, except from loopback (a local application, nothing on the
            # wire) and on the implicit-TLS port (aiosmtpd does not see that as TLS).
            self._auth_require_tls = not (self.implicit_tls or is_loopback(peer))
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._counted:
            listener = self.listener
            listener.connections.discard(self)
            left = listener.per_client.get(self._client, 1) - 1
            if left > 0:
                listener.per_client[self._client] = left
            else:
                listener.per_client.pop(self._client, None)
            self._counted = False
        super().connection_lost(error)

    def goodbye(self, reply: str) -> None:
        """Say ``reply`` (a 421) and close: the listener is stopping."""
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(reply.encode() + b"\r\n")
            transport.close()

    async def push(self, status: AnyStr) -> None:
        # aiosmtpd's own size refusals carry no enhanced status code (RFC 3463: 5.3.4).
        if isinstance(status, str) and status.startswith("552 Error:"):
            await super().push(replies.too_large(self.listener.config.max_message_bytes))
            return
        await super().push(status)

    # ---- deadlines -------------------------------------------------------------------------

    async def smtp_DATA(self, arg: str) -> None:
        # The content has its own deadline (aiosmtpd's timer runs from command to command),
        # when there will be content (aiosmtpd refuses DATA without recipients or AUTH).
        if self.envelope is not None and self.envelope.rcpt_tos and not arg:
            self._reset_timeout(self.listener.config.data_timeout_s)
        await super().smtp_DATA(arg)

    def extend_deadline(self, seconds: float) -> None:
        self._reset_timeout(seconds)

    # ---- AUTH ------------------------------------------------------------------------------

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's PLAIN and LOGIN parsers call this synchronously; the check needs the
        # database, so hand the credentials back and check them in auth_PLAIN/auth_LOGIN.
        return AuthResult(success=False, handled=False, message=_PENDING, auth_data=auth_data)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check(await super().auth_LOGIN(_, args))

    async def _check(self, parsed: AuthResult) -> AuthResult:
        creds = parsed.auth_data
        if parsed.message != _PENDING or not isinstance(creds, LoginPassword):
            return parsed  # the parser has answered (bad base64, "*" cancels)
        tenant = creds.login.decode("utf-8", "replace")
        api_key = creds.password.decode("utf-8", "replace")
        assert self.session is not None
        peer = self.session.peer
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        try:
            login = await asyncio.to_thread(
                self.listener.handler.authenticate, tenant, api_key, client
            )
        except Throttled as exc:
            self.listener.c.metrics.smtp_auth.labels("throttled").inc()
            return AuthResult(success=False, handled=False, message=replies.throttled(exc))
        except Unauthenticated:
            self.listener.c.metrics.smtp_auth.labels("refused").inc()
            log.info("SMTP AUTH refused for tenant %r from %s", replies.clean(tenant), client)
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        except (SQLAlchemyError, OSError) as exc:
            self.listener.c.metrics.smtp_auth.labels("unavailable").inc()
            log.warning("SMTP AUTH could not be checked: %s", _db_reason(exc))
            return AuthResult(success=False, handled=False, message=replies.AUTH_UNAVAILABLE)
        self.listener.c.metrics.smtp_auth.labels("ok").inc()
        return AuthResult(success=True, auth_data=login, message=replies.AUTH_OK)


class _Session(Session):  # type: ignore[misc]
    """aiosmtpd's session without the warning it logs each time AUTH succeeds (it sets the
    deprecated ``login_data`` itself; mailgate never reads it)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _Handler:
    """aiosmtpd's handler hooks: EHLO extensions, recipients, and storing a message."""

    def __init__(self, listener: SmtpListener) -> None:
        self.listener = listener
        self.c = listener.c
        self.submission = listener.c.smtp_submission

    def authenticate(self, tenant: str, api_key: str, client: str) -> SmtpLogin:
        """In a thread: the usual sign-in from reads only; otherwise one transaction,
        committed even when the check fails (the failure counts towards the throttle)."""
        with self.c.read_engine.connect() as conn:
            login = self.submission.authenticate_reading(conn, tenant, api_key, client)
        if login is not None:
            return login
        with self.c.sessions() as db:
            try:
                return self.submission.authenticate(db, tenant, api_key, client)
            finally:
                db.commit()

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd would log a traceback for every client whose TLS handshake fails (port
        # scanners, wrong certificates) and answer the exception's text.
        if isinstance(error, TLSSetupException | ConnectionError | ssl.SSLError):
            log.info("SMTP client dropped: %s", error.__cause__ or error)
            return "421 4.7.0 TLS negotiation failed"
        log.error("SMTP session error", exc_info=error)
        return replies.STORE_FAILED

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads one command line after another, so a pipelined group (RFC 2920)
        # is answered in order; it just does not say so.
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return replies.TOO_MANY_RECIPIENTS
        try:
            normalized = normalize_email(address)
        except ValueError as exc:
            return replies.bad_address(str(exc))
        envelope.rcpt_tos.append(normalized)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: _SubmissionSMTP, session: Session, envelope: Envelope
    ) -> str:
        login = session.auth_data
        assert isinstance(login, SmtpLogin)  # auth_required: aiosmtpd answered 530 otherwise
        raw = bytes(envelope.original_content or b"")
        rcpt_to = list(envelope.rcpt_tos)
        server.storing = True
        server.extend_deadline(STORE_DEADLINE_S)
        try:
            return await self._store(login, raw, rcpt_to)
        finally:
            server.storing = False

    async def _store(self, login: SmtpLogin, raw: bytes, rcpt_to: list[str]) -> str:
        c = self.c
        try:
            if c.read_engine.dialect.name == "sqlite" and len(raw) <= INLINE_PARSE_BYTES:
                prepared = self._prepare(login, raw, rcpt_to)
            else:
                prepared = await asyncio.to_thread(self._prepare, login, raw, rcpt_to)
        except MailgateError as exc:
            c.metrics.smtp_submissions.labels("refused").inc()
            return replies.for_refusal(exc)
        except Exception as exc:
            return self._not_stored(login, exc)
        try:
            await c.submissions.write(prepared)
        except Exception as exc:
            return self._not_stored(login, exc)
        c.metrics.smtp_submissions.labels("queued").inc()
        message_id = str(prepared.values["id"])
        self.listener.accepted += 1
        log.info(
            "SMTP submission %s queued for tenant %s (key %s, %d recipient(s))",
            message_id,
            login.tenant,
            login.key_name,
            len(rcpt_to),
        )
        return replies.queued(message_id)

    def _not_stored(self, login: SmtpLogin, exc: Exception) -> str:
        """451: the client keeps the message and sends it again later."""
        c = self.c
        c.metrics.smtp_submissions.labels("not_stored").inc()
        if is_unavailable(exc):
            if not isinstance(exc, DBAPIError):  # SQLAlchemy's hook has not seen it
                c.write_health.failed(exc)
            # WriteHealth logs the reason once, not once per message (a full disk under
            # load would otherwise write a line per submission).
            log.debug("SMTP submission of tenant %s not stored: %s", login.tenant, _db_reason(exc))
        elif isinstance(exc, SQLAlchemyError | OSError):
            log.error("SMTP submission of tenant %s not stored: %s", login.tenant, _db_reason(exc))
        else:
            log.exception("SMTP submission of tenant %s failed", login.tenant)
        return replies.STORE_FAILED

    def _prepare(self, login: SmtpLogin, raw: bytes, rcpt_to: list[str]) -> Prepared:
        with self.c.read_engine.connect() as conn:
            return self.submission.prepare(conn, login, raw, rcpt_to)


def _db_reason(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement and parameters (the message's
    bytes would be among them)."""
    orig = getattr(exc, "orig", None)
    return f"{type(exc).__name__}: {orig if orig is not None else exc}"[:300]


def connection_hints(
    settings: Settings, running: SmtpListener | None, tenant: str
) -> dict[str, Any]:
    """What an application needs to send over SMTP to this installation (the API keys page
    shows it): host, ports, TLS, user name. Ports are the listening ones when this process
    runs the listener (``:0`` became a real port), else the configured ones."""
    try:
        config = listener_config(settings)
    except ConfigError:
        config = None
    endpoints = config.endpoints if config is not None else ()
    plain = next((e for e in endpoints if not e.implicit_tls), None)
    implicit = next((e for e in endpoints if e.implicit_tls), None)
    is_running = None
    if running is not None:
        addresses = running.addresses
        is_running = bool(addresses)
        for _host, port, tls in addresses:
            if tls and implicit is not None:
                implicit = Endpoint(implicit.host, port, True)
            elif not tls and plain is not None:
                plain = Endpoint(plain.host, port, False)
    first = plain or implicit
    public_host = urlsplit(settings.public_base_url).hostname or "localhost"
    host: str | None = None
    local_only = False
    if first is not None:
        if first.host in ("0.0.0.0", "::", "*"):  # noqa: S104 (naming the wildcard, not binding)
            host = public_host
        else:
            host = first.host
            local_only = all(is_loopback((e.host,)) for e in endpoints)
    return {
        "enabled": first is not None,
        "host": host,
        "port": plain.port if plain is not None else None,
        "starttls": plain is not None and config is not None and config.tls is not None,
        "implicit_tls_port": implicit.port if implicit is not None else None,
        "local_only": local_only,
        "auth_requires_tls": True,
        "mechanisms": ["PLAIN", "LOGIN"],
        "username": tenant,
        "password_hint": "an API key of this tenant whose role may send (web_service, user, admin)",
        "running": is_running,
    }
