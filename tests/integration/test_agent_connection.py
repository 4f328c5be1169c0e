"""The agent's connection life: handshake, heartbeats, reconnect, refusal, TLS verification.

A real uvicorn server on 127.0.0.1 and the real agent in this process; jobs are covered by
the end-to-end tests with real SMTP servers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from tests.conftest import make_settings
from tests.live_server import live_server

from mailgate.bootstrap import Container, build, first_start
from mailgate.entrypoints.agent import (
    EXIT_REFUSED,
    Agent,
    AgentOptions,
    backoff_delay,
    check_transport_security,
    websocket_url,
)
from mailgate.entrypoints.api.app import create_app
from mailgate.schemas.remote import Deliver, ServerTest
from mailgate.services.remote_clients import ALLOW_SETTING


class NoJobs:
    """These tests send no jobs; receiving one would be a bug."""

    async def deliver(self, job: Deliver) -> dict[str, Any]:
        raise AssertionError("unexpected job")

    async def test(self, job: ServerTest) -> dict[str, Any]:
        raise AssertionError("unexpected job")


@pytest.fixture
def remote_container(tmp_path: Path, sqlite_url: str) -> Iterator[Container]:
    c = build(make_settings(tmp_path, sqlite_url, remote_heartbeat_s=0.2))
    first_start(c, echo=lambda _m: None)
    yield c
    c.engine.dispose()


def setup_client(c: Container, allowed: bool = True) -> str:
    from mailgate.adapters.db.tables import SystemSetting, Tenant

    with c.session() as db:
        db.get(SystemSetting, ALLOW_SETTING).value = allowed  # type: ignore[union-attr]
        home = db.query(Tenant).filter_by(name="home").one()
        _row, token = c.remote_clients.create(db, home, "plant-1")
    return token


def client_view(c: Container) -> dict[str, Any]:
    with c.session() as db:
        return c.remote_clients.view(c.remote_clients.get(db, 1, "plant-1"))


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def run_agent(
    options: AgentOptions,
    scenario: Callable[[asyncio.Event], Awaitable[None]],
    stop_after: bool = True,
) -> int:
    """Run the agent beside ``scenario``; then stop it (or, with ``stop_after=False``, wait
    for it to stop by itself)."""

    async def main() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(Agent(options, NoJobs()).run(stop))
        try:
            await scenario(stop)
            if not stop_after:
                return await asyncio.wait_for(task, 10)
        finally:
            stop.set()
        return await asyncio.wait_for(task, 10)

    return asyncio.run(main())


def test_websocket_url_and_backoff() -> None:
    assert websocket_url("https://mail.example.com") == (
        "wss://mail.example.com/api/v1/remote/connect"
    )
    assert websocket_url("http://127.0.0.1:8086/gw/") == (
        "ws://127.0.0.1:8086/gw/api/v1/remote/connect"
    )
    assert websocket_url("wss://h/api/v1/remote/connect") == "wss://h/api/v1/remote/connect"
    with pytest.raises(ValueError):
        websocket_url("mail.example.com")
    check_transport_security("wss://mail.example.com/x", allow_http=False)
    check_transport_security("ws://127.0.0.1:8086/x", allow_http=False)
    check_transport_security("ws://localhost/x", allow_http=False)
    check_transport_security("ws://[::1]/x", allow_http=False)
    with pytest.raises(ValueError, match="refusing plain http"):
        check_transport_security("ws://mail.example.com/x", allow_http=False)
    with pytest.raises(ValueError):
        Agent(AgentOptions(url="http://10.1.2.3:8086", token="mgr_x"), NoJobs())
    check_transport_security("ws://mail.example.com/x", allow_http=True)
    delays = [backoff_delay(n, 1, 60) for n in range(12)]
    assert all(0.5 <= d <= 1 for d in delays[:1])
    assert all(30 <= d <= 60 for d in delays[7:])
    assert len({round(backoff_delay(5, 1, 60), 6) for _ in range(20)}) > 1  # jitter


def test_agent_connects_heartbeats_reconnects_and_stops(
    remote_container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    c = remote_container
    token = setup_client(c)
    caplog.set_level(logging.INFO, logger="mailgate")
    with live_server(create_app(c)) as url:
        opts = AgentOptions(url=url, token=token, backoff_initial_s=0.05, backoff_max_s=0.2)

        async def scenario(_stop: asyncio.Event) -> None:
            await until(lambda: c.hub.is_connected(1, "plant-1"))
            first = client_view(c)
            assert first["connected"] is True
            assert first["agent_address"] == "127.0.0.1"
            await asyncio.sleep(0.5)  # a few heartbeats move last_seen_at on
            assert client_view(c)["last_seen_at"] > first["last_seen_at"]
            # The server drops the connection (e.g. a restart): the agent comes back.
            conn = c.hub._conns[(1, "plant-1")]
            await c.hub.call(lambda: c.hub.disconnect(1, "plant-1", 1012, "restarting"))
            await until(lambda: c.hub._conns.get((1, "plant-1")) not in (None, conn))

        assert run_agent(opts, scenario) == 0
        wait_for(lambda: not c.hub.is_connected(1, "plant-1"))
        wait_for(lambda: client_view(c)["connected"] is False)
    messages = [r.getMessage() for r in caplog.records if r.name == "mailgate.agent"]
    assert sum("connected as remote client plant-1 of tenant home" in m for m in messages) == 2
    assert any("reconnecting in" in m for m in messages)
    assert token not in caplog.text


def test_agent_stops_when_its_client_is_deleted(remote_container: Container) -> None:
    c = remote_container
    token = setup_client(c)
    with live_server(create_app(c)) as url:
        opts = AgentOptions(url=url, token=token, backoff_initial_s=0.05)

        async def scenario(_stop: asyncio.Event) -> None:
            await until(lambda: c.hub.is_connected(1, "plant-1"))
            with c.session() as db:
                c.remote_clients.delete(db, c.remote_clients.get(db, 1, "plant-1"))
            c.hub.call_soon_threadsafe_disconnect(1, "plant-1", 4401, "deleted")

        assert run_agent(opts, scenario, stop_after=False) == EXIT_REFUSED
        # A wrong token is refused at the handshake and the agent stops at once.
        wrong = AgentOptions(url=url, token="mgr_" + "A" * 43)

        async def main() -> int:
            return await asyncio.wait_for(Agent(wrong, NoJobs()).run(), 10)

        assert asyncio.run(main()) == EXIT_REFUSED


def test_agent_keeps_retrying_while_remote_clients_are_off(
    remote_container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    c = remote_container
    token = setup_client(c, allowed=False)
    caplog.set_level(logging.INFO, logger="mailgate.agent")
    with live_server(create_app(c)) as url:
        opts = AgentOptions(url=url, token=token, backoff_initial_s=0.05, backoff_max_s=0.1)

        async def scenario(_stop: asyncio.Event) -> None:
            await until(lambda: "refused the connection (403" in caplog.text)
            from mailgate.adapters.db.tables import SystemSetting

            with c.session() as db:
                db.get(SystemSetting, ALLOW_SETTING).value = True  # type: ignore[union-attr]
            await until(lambda: c.hub.is_connected(1, "plant-1"))

        assert run_agent(opts, scenario) == 0
    assert "remote clients are not allowed on this installation" in caplog.text


def test_agent_verifies_the_server_certificate(
    remote_container: Container, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = remote_container
    token = setup_client(c)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    caplog.set_level(logging.INFO, logger="mailgate.agent")
    with live_server(create_app(c), certfile=certfile, keyfile=keyfile) as url:
        assert url.startswith("https://")
        untrusting = AgentOptions(url=url, token=token, backoff_initial_s=0.05)

        async def rejected(_stop: asyncio.Event) -> None:
            await until(lambda: "is not trusted" in caplog.text)

        assert run_agent(untrusting, rejected) == 0
        assert not c.hub.is_connected(1, "plant-1")

        trusting = AgentOptions(url=url, token=token, ca_file=cafile)

        async def accepted(_stop: asyncio.Event) -> None:
            await until(lambda: c.hub.is_connected(1, "plant-1"))

        assert run_agent(trusting, accepted) == 0
    assert "wss://localhost" in caplog.text


def test_agent_command_checks_its_url_before_connecting() -> None:
    from typer.testing import CliRunner

    from mailgate.entrypoints.cli import app

    runner = CliRunner()
    env = {"MAILGATE_AGENT_URL": "http://mail.example.com", "MAILGATE_AGENT_TOKEN": "mgr_x"}
    result = runner.invoke(app, ["agent"], env=env)
    assert result.exit_code == 1
    assert "refusing plain http://" in result.output
    result = runner.invoke(app, ["agent", "--url", "mail.example.com", "--token", "mgr_x"])
    assert result.exit_code == 1 and "absolute http(s)://" in result.output
    result = runner.invoke(app, ["agent"], env={"MAILGATE_AGENT_TOKEN": "mgr_x"})
    assert result.exit_code != 0 and "--url" in result.output


def test_a_silent_agent_is_dropped_after_three_heartbeats(remote_container: Container) -> None:
    import websockets
    from websockets.exceptions import ConnectionClosed

    from mailgate.schemas.remote import CLOSE_HEARTBEAT_MISSED

    c = remote_container
    token = setup_client(c)

    async def silent(url: str) -> int | None:
        ws_url = websocket_url(url)
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(ws_url, additional_headers=headers) as ws:
            await ws.send('{"type": "hello", "v": 1}')
            assert '"welcome"' in str(await ws.recv())
            try:
                await asyncio.wait_for(ws.recv(), 10)  # no heartbeat from us: 3 x 0.2 s
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        return None

    with live_server(create_app(c)) as url:
        assert asyncio.run(silent(url)) == CLOSE_HEARTBEAT_MISSED
        wait_for(lambda: client_view(c)["connected"] is False)
