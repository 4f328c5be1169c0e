"""Remote clients, the system setting that allows them, and the agents' WebSocket handshake.

Runs on SQLite and PostgreSQL through the real app (Starlette's test client speaks the
WebSocket protocol to the ASGI app in-process).
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from tests.conftest import Api, password_server

from mailgate.adapters.db.tables import RemoteClient
from mailgate.schemas.remote import CLOSE_NOT_ALLOWED, CLOSE_TOKEN_REVOKED

SETTINGS = "/api/v1/system/settings"
CLIENTS = "/api/v1/tenants/{tenant}/remote-clients"
CONNECT = "/api/v1/remote/connect"


def allow(api: Api, admin: str, value: bool = True) -> None:
    r = api.request("PUT", SETTINGS, admin, json={"allow_remote_clients": value})
    assert r.status_code == 200, r.text
    assert r.json()["allow_remote_clients"] is value


def make_client(api: Api, admin: str, name: str, tenant: str = "home") -> str:
    r = api.request("POST", CLIENTS.format(tenant=tenant), admin, json={"name": name})
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def hello(ws: Any) -> dict[str, Any]:
    ws.send_json({"type": "hello", "v": 1, "agent_version": "9.9.9", "hostname": "plant"})
    welcome: dict[str, Any] = ws.receive_json()
    return welcome


def test_system_settings_admin_only_and_validated(api: Api) -> None:
    admin = api.admin_token()
    body = api.request("GET", SETTINGS, admin).json()
    assert body == {
        "allow_remote_clients": False,
        "public_base_url": "http://testserver",
        "outbound_policy": {"deny_networks": ["169.254.0.0/16", "fe80::/10"]},
    }
    api.make_tenant(admin, "acme")
    tenant_admin = api.make_user(admin, "ann", {"acme": "admin"})
    assert api.request("GET", SETTINGS, tenant_admin).status_code == 403
    assert (
        api.request("PUT", SETTINGS, tenant_admin, json={"allow_remote_clients": True}).status_code
        == 403
    )
    r = api.request(
        "PUT", SETTINGS, admin, json={"allow_remote_clients": "maybe", "public_base_url": "ftp:x"}
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in r.json()["errors"]} == {"allow_remote_clients", "public_base_url"}
    assert api.request("GET", SETTINGS, admin).json() == body
    r = api.request("PUT", SETTINGS, admin, json={"public_base_url": "https://mail.example.com/"})
    assert r.json() == {
        **body,
        "public_base_url": "https://mail.example.com",
    }


def test_remote_client_crud_token_once_and_tenant_isolation(api: Api) -> None:
    admin = api.admin_token()
    api.make_tenant(admin, "acme")
    token = make_client(api, admin, "plant-1")
    assert token.startswith("mgr_")
    with api.container.session() as db:
        stored = db.query(RemoteClient).one()
        assert token not in stored.token_hash and len(stored.token_hash) == 64

    url = CLIENTS.format(tenant="home")
    r = api.request("GET", url, admin)
    assert r.status_code == 200
    assert r.json()["items"] == [
        {
            "name": "plant-1",
            "connected": False,
            "last_seen_at": None,
            "agent_version": None,
            "agent_address": None,
            "created_at": r.json()["items"][0]["created_at"],
        }
    ]
    assert token not in r.text
    assert api.request("POST", url, admin, json={"name": "plant-1"}).status_code == 409
    r = api.request("POST", url, admin, json={"name": "bad/name"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name"

    # Another tenant's admin: the client does not exist for them, nor the tenant.
    acme_admin = api.make_user(admin, "ann", {"acme": "admin"})
    assert api.request("GET", url, acme_admin).status_code == 404
    assert api.request("DELETE", f"{url}/plant-1", acme_admin).status_code == 404
    acme_url = CLIENTS.format(tenant="acme")
    assert api.request("GET", acme_url, acme_admin).json()["items"] == []
    assert api.request("DELETE", f"{acme_url}/plant-1", acme_admin).status_code == 404
    # A tenant user (not admin) may not manage remote clients.
    acme_user = api.make_user(admin, "bob", {"acme": "user"})
    assert api.request("GET", acme_url, acme_user).status_code == 403

    assert api.request("DELETE", f"{url}/plant-1", admin).status_code == 204
    assert api.request("GET", f"{url}/plant-1", admin).status_code == 404
    assert api.request("GET", url, admin).json()["items"] == []


def test_remote_output_needs_the_setting_and_an_own_client(api: Api) -> None:
    admin = api.admin_token()
    api.make_tenant(admin, "acme")
    make_client(api, admin, "plant-1", tenant="acme")
    body = password_server(remote_output={"enabled": True, "remote_client": "plant-1"})
    servers = "/api/v1/tenants/home/email-servers"
    r = api.request("POST", servers, admin, json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "remote_output.enabled"
    allow(api, admin)
    # plant-1 belongs to acme, not home.
    r = api.request("POST", servers, admin, json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "remote_output.remote_client"
    assert api.request("GET", servers, admin).json()["items"] == []
    make_client(api, admin, "plant-1")
    r = api.request("POST", servers, admin, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["remote_output"] == {"enabled": True, "remote_client": "plant-1"}


def test_connect_refused_while_off_or_with_a_wrong_token(api: Api) -> None:
    admin = api.admin_token()
    token = make_client(api, admin, "plant-1")
    with (
        pytest.raises(WebSocketDenialResponse) as off,
        api.client.websocket_connect(CONNECT, headers=api.auth(token)),
    ):
        pass
    assert off.value.status_code == 403
    assert "not allowed" in off.value.json()["detail"]
    allow(api, admin)
    for bad in ("mgr_" + "x" * 43, "mgk_nope", api.admin_token()):
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            api.client.websocket_connect(CONNECT, headers=api.auth(bad)),
        ):
            pass
        assert refused.value.status_code == 401
        assert refused.value.headers["content-type"] == "application/problem+json"
    with (
        pytest.raises(WebSocketDenialResponse) as missing,
        api.client.websocket_connect(CONNECT),
    ):
        pass
    assert missing.value.status_code == 401


def test_connected_state_heartbeat_and_delete_disconnects(api: Api) -> None:
    admin = api.admin_token()
    allow(api, admin)
    token = make_client(api, admin, "plant-1")
    url = CLIENTS.format(tenant="home")
    with api.client.websocket_connect(CONNECT, headers=api.auth(token)) as ws:
        welcome = hello(ws)
        assert welcome["type"] == "welcome" and welcome["v"] == 1
        assert (welcome["tenant"], welcome["client"]) == ("home", "plant-1")
        assert welcome["heartbeat_s"] > 0
        ws.send_json({"type": "heartbeat"})
        ws.send_json({"type": "bogus"})
        assert ws.receive_json()["type"] == "error"
        item = api.request("GET", f"{url}/plant-1", admin).json()
        assert item["connected"] is True
        assert item["agent_version"] == "9.9.9"
        assert item["agent_address"] == "testclient"
        assert item["last_seen_at"] is not None
        assert api.container.hub.is_connected(1, "plant-1")

        assert api.request("DELETE", f"{url}/plant-1", admin).status_code == 204
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == CLOSE_TOKEN_REVOKED
    assert not api.container.hub.is_connected(1, "plant-1")
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        api.client.websocket_connect(CONNECT, headers=api.auth(token)),
    ):
        pass
    assert refused.value.status_code == 401


def test_switching_the_setting_off_ends_open_connections(api: Api) -> None:
    admin = api.admin_token()
    allow(api, admin)
    token = make_client(api, admin, "plant-1")
    with api.client.websocket_connect(CONNECT, headers=api.auth(token)) as ws:
        hello(ws)
        allow(api, admin, False)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == CLOSE_NOT_ALLOWED
    item = api.request("GET", CLIENTS.format(tenant="home") + "/plant-1", admin).json()
    assert item["connected"] is False
