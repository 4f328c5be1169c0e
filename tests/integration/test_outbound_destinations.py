"""The outbound destination policy at connect time (issue 13, point 6): SMTP (the test
e-mail and delivery sessions), token endpoints and the HTTP mail APIs connect only to
addresses the installation allows; a refusal is a clear step result and nothing reaches the
peer. A peer that does not speak SMTP shows none of its bytes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import Api, make_settings
from tests.drip_server import DripServer
from tests.smtp_fixtures import SmtpServers, resolved

from mailgate.adapters.db.tables import EmailServer
from mailgate.adapters.http_api.client import api_client
from mailgate.adapters.http_api.exchange import translate
from mailgate.adapters.smtp.transport import SmtpTransport
from mailgate.bootstrap import build, first_start
from mailgate.domain.oauth2 import TokenEndpointDown
from mailgate.domain.outbound import OutboundPolicy
from mailgate.domain.transport import FailureKind
from mailgate.entrypoints.api.app import create_app
from mailgate.ports import SessionFailed

SETTINGS = "/api/v1/system/settings"
BASE = "/api/v1/tenants/home/email-servers"
LOOPBACK = ["169.254.0.0/16", "fe80::/10", "127.0.0.0/8", "::1"]
DENY_LOOPBACK = OutboundPolicy.of(LOOPBACK)


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str) -> Iterator[Api]:
    """SQLite only: the subject is where connections go, not the database engine."""
    c = build(make_settings(tmp_path, sqlite_url, oauth_timeout_s=2))
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        yield Api(client, c)
    c.engine.dispose()


def _deny(api: Api, admin: str, networks: list[str]) -> None:
    r = api.request("PUT", SETTINGS, admin, json={"outbound_policy": {"deny_networks": networks}})
    assert r.status_code == 200, r.text


def _test(api: Api, admin: str, name: str = "DEFAULT") -> dict[str, Any]:
    r = api.request("POST", f"{BASE}/{name}/test", admin, json={"to": "rcpt@example.org"})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_smtp_test_to_a_denied_address_is_refused_before_connecting(
    api: Api, smtp_servers: SmtpServers, host: str
) -> None:
    server = smtp_servers.start()
    admin = api.admin_token()
    r = api.request("POST", BASE, admin, json=server.config(host=host))
    assert r.status_code == 201, r.text
    _deny(api, admin, LOOPBACK)
    result = _test(api, admin)
    assert result["ok"] is False
    failed = [s for s in result["steps"] if not s["ok"]]
    assert [s["step"] for s in failed] == ["connect"], result["steps"]
    assert "outbound policy denies" in failed[0]["detail"] and "127.0.0.0/8" in failed[0]["detail"]
    assert "outbound policy" in (result["hint"] or "")
    assert server._protocols == [] and server.commands == []  # nothing reached the server

    _deny(api, admin, ["169.254.0.0/16"])  # the policy is read at connect time
    assert _test(api, admin)["ok"] is True
    assert server.count == 1


def test_delivery_sessions_follow_the_policy(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    target = resolved(server.config())
    with pytest.raises(SessionFailed) as caught:
        asyncio.run(SmtpTransport(lambda: DENY_LOOPBACK).open(target, None))
    result = caught.value.result
    assert result.step == "connect" and "outbound policy denies" in result.text
    assert server._protocols == []


def test_token_endpoint_at_a_denied_address_is_not_contacted(api: Api) -> None:
    admin = api.admin_token()
    with DripServer(interval_s=0.2, max_s=5) as drip:
        auth = {
            "method": "oauth2",
            "provider": "custom",
            "grant": "client_credentials",
            "username": "sender@example.com",
            "client_id": "app",
            "client_secret": "app-secret",
            "authorize_url": drip.url + "/authorize",
            "token_url": drip.url + "/token",
            "scope": "smtp",
        }
        body = {"name": "APP", "host": "smtp.example.com", "authentication": auth}
        assert api.request("POST", BASE, admin, json=body).status_code == 201
        _deny(api, admin, LOOPBACK)
        with api.container.session() as db:
            server_id = db.scalar(select(EmailServer.id).where(EmailServer.name == "APP"))
        assert server_id is not None
        with pytest.raises(TokenEndpointDown) as caught:
            api.container.oauth2.tokens.refresh_now(server_id)
        assert "outbound policy denies" in caught.value.detail
        assert drip.connections == 0


def test_mail_api_client_refuses_denied_addresses() -> None:
    async def call() -> BaseException:
        client = api_client(None, connect_s=2, command_s=2, policy=lambda: DENY_LOOPBACK)
        try:
            await client.post("http://127.0.0.1:9/v1.0/users/x/sendMail", content=b"x")
        except httpx.HTTPError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("the request was not refused")

    error = translate("send", asyncio.run(call()), where="127.0.0.1:9", limit_s=2)
    assert error.kind is FailureKind.DESTINATION_DENIED
    assert "outbound policy denies" in error.detail


class BannerServer:
    """A TCP service that is not SMTP: it greets with its own banner (as SSH does)."""

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.banner)
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(1024)


@pytest.mark.parametrize(
    "banner",
    [b"SSH-2.0-OpenSSH_9.2p1 internal-secret-banner\r\n", b"999 internal-secret-banner\r\n"],
)
def test_a_peer_that_is_not_smtp_shows_none_of_its_bytes(api: Api, banner: bytes) -> None:
    peer = BannerServer(banner)
    try:
        admin = api.admin_token()
        body = {
            "name": "DEFAULT",
            "host": "127.0.0.1",
            "port": peer.port,
            "starttls": "disabled",
            "timeouts": {"connect_s": 2, "command_s": 2},
            "message_defaults": {"from_address": "noreply@example.com"},
        }
        assert api.request("POST", BASE, admin, json=body).status_code == 201
        r = api.request("POST", f"{BASE}/DEFAULT/test", admin, json={"to": "rcpt@example.org"})
        assert r.status_code == 200, r.text
        assert "internal-secret-banner" not in r.text
        result = r.json()
        assert result["ok"] is False
        failed = [s for s in result["steps"] if not s["ok"]]
        assert failed and "SMTP" in failed[0]["detail"], result
    finally:
        peer.listener.close()
