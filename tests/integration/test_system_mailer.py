"""System mail (services/system_mailer.py) goes through the injected delivery transport, and
every way it can fail ends in one ``SystemMailError`` without a secret in its text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import make_settings
from tests.smtp_fixtures import HOST, SmtpServers

from mailgate.adapters.smtp.transport import SmtpTransport
from mailgate.bootstrap import Container, build, first_start
from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.ports import DeliverySession, TokenProvider
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer
from mailgate.services.system_mailer import SystemMailError, TransportSystemMailer

PASSWORD = "System-Mail-pw-42"
FROM = {"message_defaults": {"from_address": "mailgate@example.com"}}


@pytest.fixture
def c(tmp_path: Path, sqlite_url: str) -> Iterator[Container]:
    container = build(make_settings(tmp_path, sqlite_url))
    first_start(container, echo=lambda _m: None)
    yield container
    container.engine.dispose()


def system_server(c: Container, body: dict[str, Any]) -> None:
    with c.session() as db:
        c.servers.create(db, None, EmailServerIn.model_validate({**body, **FROM}))


class RecordingTransport:
    """Any ``ports.Transport``: remembers what it was asked to open and send."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.sent: list[tuple[str, list[str]]] = []

    async def open(self, server: ResolvedServer, tokens: TokenProvider | None) -> DeliverySession:
        self.opened.append(server.name)
        return self

    @property
    def usable(self) -> bool:
        return True

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult:
        self.sent.append((mail_from, rcpt_to))
        return AttemptResult(Outcome.DELIVERED, 250, "2.0.0 ok", 1)

    async def close(self) -> None:
        pass


def mailer(c: Container, transport: Any) -> TransportSystemMailer:
    return TransportSystemMailer(c.sessions, c.servers, c.token_provider_for, transport, c.clock)


def test_system_mail_uses_the_injected_transport(c: Container, smtp_servers: SmtpServers) -> None:
    system_server(c, {"host": HOST, "port": smtp_servers.closed_port(), "starttls": "disabled"})
    transport = RecordingTransport()
    mailer(c, transport).send_system_mail("admin@example.org", "Hello", "text")
    assert transport.opened == ["SYSTEM"]
    assert transport.sent == [("mailgate@example.com", ["admin@example.org"])]


def test_an_unreachable_server_is_a_system_mail_error(
    c: Container, smtp_servers: SmtpServers
) -> None:
    system_server(c, {"host": HOST, "port": smtp_servers.closed_port(), "starttls": "disabled"})
    with pytest.raises(SystemMailError, match="connection refused"):
        mailer(c, SmtpTransport()).send_system_mail("admin@example.org", "Hello", "text")


def test_a_wrong_password_and_a_refused_recipient(c: Container, smtp_servers: SmtpServers) -> None:
    smtp = smtp_servers.start(tls="starttls", users={"mailgate": PASSWORD})
    system_server(c, smtp.password_config("mailgate", "Wrong-" + PASSWORD))
    with pytest.raises(SystemMailError) as caught:
        mailer(c, SmtpTransport()).send_system_mail("admin@example.org", "Hello", "text")
    assert "535" in str(caught.value) and PASSWORD not in str(caught.value)

    with c.session() as db:
        db.delete(c.servers.get(db, None, "SYSTEM"))
    system_server(c, smtp.password_config("mailgate", PASSWORD))
    smtp.refuse("gone@example.org", "550 5.1.1 no such user")
    with pytest.raises(SystemMailError, match=re.escape("refused: 550 5.1.1 no such user")):
        mailer(c, SmtpTransport()).send_system_mail("gone@example.org", "Hello", "text")
    assert not smtp.received
