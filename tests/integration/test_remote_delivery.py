"""The worker's side of remote output against a real agent: the session opener, results as
the transport gives them, size limits, OAuth2 access tokens - with uvicorn, the in-process
agent and an aiosmtpd server (the worker itself is covered by tests/e2e)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.live_server import live_server
from tests.remote_helpers import RAW, remote_container, remote_server, until_connected
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db.tables import SystemSetting, Tenant
from mailgate.bootstrap import Container
from mailgate.domain.messages import Outcome
from mailgate.entrypoints.agent import Agent, AgentOptions, TransportJobRunner
from mailgate.entrypoints.api.app import create_app
from mailgate.ports import SessionFailed
from mailgate.schemas.email_server import EmailServerIn


@pytest.fixture
def c(tmp_path: Path, sqlite_url: str) -> Iterator[Container]:
    yield from remote_container(tmp_path, sqlite_url)


def test_opener_sends_through_the_agent_and_reports_like_smtp(
    c: Container, smtp_servers: SmtpServers
) -> None:
    server, token, smtp = remote_server(c, smtp_servers)

    async def scenario(url: str) -> None:
        with pytest.raises(SessionFailed) as offline:
            await c.transports.open(server, None)
        assert offline.value.result.text == "remote client plant-1 is not connected"
        assert offline.value.result.outcome is Outcome.TEMPORARY

        stop = asyncio.Event()
        agent = asyncio.create_task(
            Agent(
                AgentOptions(url=url, token=token, max_frame_bytes=200_000),
                TransportJobRunner(idle_s=1),
            ).run(stop)
        )
        try:
            await until_connected(c)
            session = await c.transports.open(server, None)
            assert session.usable
            ok = await session.send("noreply@example.com", ["rcpt@example.org"], RAW)
            assert (ok.outcome, ok.code) == (Outcome.DELIVERED, 250)
            smtp.refuse("nobody@example.org")
            partial = await session.send(
                "noreply@example.com", ["rcpt@example.org", "nobody@example.org"], RAW
            )
            assert partial.recipients["nobody@example.org"].code == 550
            assert partial.recipients["rcpt@example.org"].outcome is Outcome.DELIVERED
            big = await session.send("noreply@example.com", ["rcpt@example.org"], RAW * 2000)
            assert big.outcome is Outcome.PERMANENT
            assert "larger than remote client plant-1 accepts" in big.text

        finally:
            stop.set()
            await asyncio.wait_for(agent, 10)
        for _ in range(100):
            if not session.usable:
                break
            await asyncio.sleep(0.05)
        assert not session.usable

    with live_server(create_app(c)) as url:
        asyncio.run(scenario(url))
    assert smtp.count == 2


class Tokens:
    """Stands in for the OAuth2 token keeper: a stale token until a refresh is forced."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def access_token(self, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        return "fresh-token" if force_refresh else "stale-token"


def test_oauth2_access_token_goes_to_the_agent_and_a_rejected_one_is_refreshed(
    c: Container, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start(
        tls="starttls", xoauth2=lambda user, token: token == "fresh-token", mechanisms=()
    )
    body = smtp.config(
        authentication={
            "method": "oauth2",
            "provider": "microsoft",
            "grant": "client_credentials",
            "username": "sender@contoso.com",
            "directory_tenant_id": "contoso",
            "client_id": "app",
            "client_secret": "the-client-secret",
        },
        remote_output={"enabled": True, "remote_client": "plant-1"},
    )
    with c.session() as db:
        db.get(SystemSetting, "allow_remote_clients").value = True  # type: ignore[union-attr]
        home = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert home is not None
        _row, token = c.remote_clients.create(db, home, "plant-1")
        server = c.servers.resolve(c.servers.create(db, home, EmailServerIn.model_validate(body)))
    tokens = Tokens()
    sent_frames: list[str] = []

    async def scenario(url: str) -> None:
        stop = asyncio.Event()
        agent = asyncio.create_task(
            Agent(AgentOptions(url=url, token=token), TransportJobRunner()).run(stop)
        )
        try:
            await until_connected(c)
            conn = c.hub._conns[(1, "plant-1")]
            original = conn.send_json

            async def spy(frame: dict[str, Any]) -> None:
                sent_frames.append(json.dumps(frame))
                await original(frame)

            conn.send_json = spy
            session = await c.transports.open(server, tokens)
            result = await session.send("sender@contoso.com", ["rcpt@example.org"], RAW)
            assert (result.outcome, result.code) == (Outcome.DELIVERED, 250), result
        finally:
            stop.set()
            await asyncio.wait_for(agent, 10)

    with live_server(create_app(c)) as url:
        asyncio.run(scenario(url))
    assert tokens.calls == [False, True]
    assert [m.login for m in smtp.received] == ["sender@contoso.com"]
    assert len(sent_frames) == 2
    assert "stale-token" in sent_frames[0] and "fresh-token" in sent_frames[1]
    assert not any("the-client-secret" in f for f in sent_frames)
