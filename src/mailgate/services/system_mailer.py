"""System mail (OAuth2 alerts, password reset links) through the system e-mail server.

The system server is the configuration without a tenant. Sending goes through the injected
``ports.Transport`` that delivers the outbox, so its TLS policy, password or XOAUTH2 apply
unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid

from sqlalchemy.orm import Session, sessionmaker

from mailgate.domain.clock import Clock
from mailgate.domain.errors import NotFound
from mailgate.domain.messages import Outcome, describe
from mailgate.ports import SessionFailed, TokenProvider, Transport
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.diagnosis.message import header_problem, sender_of
from mailgate.services.email_servers import SYSTEM_SERVER_NAME, EmailServers


class SystemMailError(Exception):
    """System mail could not be sent. The text never carries a secret."""


class TransportSystemMailer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        servers: EmailServers,
        token_provider_for: Callable[[ResolvedServer], TokenProvider | None],
        transport: Transport,
        clock: Clock,
    ) -> None:
        self.sessions = sessions
        self.servers = servers
        self.token_provider_for = token_provider_for
        self.transport = transport
        self.clock = clock

    def send_system_mail(self, to: str, subject: str, text: str) -> None:
        with self.sessions() as db:
            try:
                server = self.servers.resolve(self.servers.get(db, None, SYSTEM_SERVER_NAME))
            except NotFound:
                raise SystemMailError("no system e-mail server is configured") from None
        from_address, envelope_from = sender_of(server.config)
        if from_address is None or envelope_from is None:
            raise SystemMailError("the system e-mail server has no from_address")
        if (problem := header_problem(server.config)) is not None:
            raise SystemMailError(f"the system e-mail server's {problem}")
        msg = EmailMessage()
        msg["From"] = formataddr(
            (server.config.message_defaults.from_name or "mailgate", from_address)
        )
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = format_datetime(self.clock())
        msg["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2])
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to alerts
        msg.set_content(text)
        raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._send(server, envelope_from, to, raw))
            except BaseException as exc:
                errors.append(exc)

        # A thread of its own: the caller may be inside an event loop (a worker's to_thread
        # is not, but nothing here should depend on that).
        worker = threading.Thread(target=run, name="system-mail", daemon=True)
        worker.start()
        worker.join()
        if errors:
            raise errors[0]

    async def _send(self, server: ResolvedServer, mail_from: str, to: str, raw: bytes) -> None:
        try:
            session = await self.transport.open(server, self.token_provider_for(server))
        except SessionFailed as failed:  # the transport's texts carry no secret
            raise SystemMailError(failed.result.text) from None
        try:
            result = await session.send(mail_from, [to], raw)
        finally:
            await session.close()
        if result.outcome is not Outcome.DELIVERED:
            if result.code is None:  # no answer: the connection broke
                raise SystemMailError(result.text)
            reply = describe(result.code, result.text)
            raise SystemMailError(f"the system e-mail server refused: {reply}")
