"""Jobs through a real agent: the agent's SMTP delivery (its report decodes into the
transport's own result) and "Send test e-mail" through the API, with uvicorn, the agent in
this process and an aiosmtpd server only the agent talks to."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import ADMIN_PASSWORD
from tests.live_server import live_server
from tests.remote_helpers import RAW, remote_container, remote_server, until_connected
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.remote.codec import decode_outcome, server_spec
from mailgate.adapters.smtp.replies import SendResult
from mailgate.bootstrap import Container
from mailgate.domain.messages import Outcome
from mailgate.entrypoints.agent import Agent, AgentOptions, TransportJobRunner
from mailgate.entrypoints.api.app import create_app
from mailgate.schemas.email_server import ResolvedServer
from mailgate.schemas.remote import Deliver, ServerTest


@pytest.fixture
def c(tmp_path: Path, sqlite_url: str) -> Iterator[Container]:
    yield from remote_container(tmp_path, sqlite_url)


def deliver_frame(server: ResolvedServer, rcpt_to: list[str]) -> dict[str, object]:
    return Deliver(
        id="",
        message_id="<m1@example.com>",
        server=server_spec(server),
        mail_from="noreply@example.com",
        rcpt_to=rcpt_to,
        raw_b64=base64.b64encode(RAW).decode(),
    ).model_dump()


def test_agent_delivers_and_tests_like_mailgate_itself(
    c: Container, smtp_servers: SmtpServers
) -> None:
    server, token, smtp = remote_server(c, smtp_servers)
    smtp.refuse("nobody@example.org")
    test_url = "/api/v1/tenants/home/email-servers/DEFAULT/test"

    async def scenario(url: str, http: httpx.AsyncClient) -> None:
        offline = (await http.post(test_url, json={"to": "check@example.org"})).json()
        assert offline["ok"] is False
        assert offline["steps"][0]["detail"] == "remote client plant-1 is not connected"
        assert "agent" in offline["hint"]

        stop = asyncio.Event()
        agent = asyncio.create_task(
            Agent(AgentOptions(url=url, token=token), TransportJobRunner(idle_s=1)).run(stop)
        )
        try:
            await until_connected(c)
            report = await c.hub.call(
                lambda: c.hub.request(1, "plant-1", deliver_frame(server, ["rcpt@example.org"]), 30)
            )
            ok = decode_outcome(report)
            assert isinstance(ok, SendResult) and ok.outcome is Outcome.DELIVERED
            assert ok.reply is not None and ok.reply.code == 250
            report = await c.hub.call(
                lambda: c.hub.request(
                    1,
                    "plant-1",
                    deliver_frame(server, ["rcpt@example.org", "nobody@example.org"]),
                    30,
                )
            )
            partial = decode_outcome(report)
            assert isinstance(partial, SendResult)
            assert partial.recipients["nobody@example.org"].outcome is Outcome.PERMANENT
            assert partial.recipients["rcpt@example.org"].outcome is Outcome.DELIVERED

            r = await http.post(test_url, json={"to": "check@example.org", "mode": "send"})
            assert r.status_code == 200
            result = r.json()
            assert result["ok"] is True, result
            assert [s["step"] for s in result["steps"]][-1] == "data"
            assert result["remote_client"] == "plant-1"
            assert "s3cret-pw" not in r.text
        finally:
            stop.set()
            await asyncio.wait_for(agent, 10)

    async def main(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            http.headers["Authorization"] = f"Bearer {r.json()['token']}"
            await scenario(url, http)

    with live_server(create_app(c)) as url:
        asyncio.run(main(url))
    assert smtp.count == 3  # two deliveries (one partly refused) and the test e-mail


class GarbledTests:
    """An agent whose test results this version cannot read (another version's format)."""

    async def deliver(self, job: Deliver) -> dict[str, Any]:
        raise AssertionError("unexpected job")

    async def test(self, job: ServerTest) -> dict[str, Any]:
        return {"steps": [{"step": "connect", "passed": "yes"}], "verdict": "fine"}


def test_an_unreadable_test_result_from_the_agent_is_a_failed_step(
    c: Container, smtp_servers: SmtpServers
) -> None:
    _server, token, smtp = remote_server(c, smtp_servers)
    test_url = "/api/v1/tenants/home/email-servers/DEFAULT/test"

    async def main(url: str) -> None:
        stop = asyncio.Event()
        agent = asyncio.create_task(
            Agent(AgentOptions(url=url, token=token), GarbledTests()).run(stop)
        )
        try:
            await until_connected(c)
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await http.post(
                    "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
                )
                http.headers["Authorization"] = f"Bearer {r.json()['token']}"
                r = await http.post(test_url, json={"to": "check@example.org"})
        finally:
            stop.set()
            await asyncio.wait_for(agent, 10)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["ok"] is False and result["remote_client"] == "plant-1"
        assert "cannot read" in result["steps"][0]["detail"]
        assert "verdict" not in result

    with live_server(create_app(c)) as url:
        asyncio.run(main(url))
    assert smtp.count == 0
