"""Shared setup for the in-process remote-output tests: a container with fast heartbeats, a
remote-output configuration whose SMTP server only the agent talks to, and a wait for the
agent's connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from tests.conftest import make_settings
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.db.tables import SystemSetting, Tenant
from mailgate.bootstrap import Container, build, first_start
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer

RAW = (
    b"From: noreply@example.com\r\nTo: rcpt@example.org\r\nSubject: remote\r\n"
    b"Message-ID: <m1@example.com>\r\n\r\nhello\r\n"
)


def remote_container(tmp_path: Path, sqlite_url: str) -> Iterator[Container]:
    """Body of the modules' ``c`` fixture: a container with quick agent heartbeats (1 s: the
    server closes after three missed ones, and a loaded CI machine can stall an agent 1.5 s)."""
    container = build(make_settings(tmp_path, sqlite_url, remote_heartbeat_s=1.0))
    first_start(container, echo=lambda _m: None)
    yield container
    container.engine.dispose()


def remote_server(
    c: Container, smtp_servers: SmtpServers
) -> tuple[ResolvedServer, str, SmtpServer]:
    """A password configuration of ``home`` delivered through the remote client plant-1."""
    smtp = smtp_servers.start(tls="starttls", users={"alice": "s3cret-pw"})
    with c.session() as db:
        db.get(SystemSetting, "allow_remote_clients").value = True  # type: ignore[union-attr]
        home = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert home is not None
        _row, token = c.remote_clients.create(db, home, "plant-1")
        body = smtp.password_config(
            "alice", "s3cret-pw", remote_output={"enabled": True, "remote_client": "plant-1"}
        )
        server = c.servers.resolve(c.servers.create(db, home, EmailServerIn.model_validate(body)))
    return server, token, smtp


async def until_connected(c: Container) -> None:
    for _ in range(200):
        if c.hub.is_connected(1, "plant-1"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the agent did not connect")
