"""Per-tenant caps (issue 13, point 8): a tenant cannot create e-mail servers, API keys,
remote clients or webhooks without bound; the installation's settings say how many."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.conftest import Api, make_settings, password_server

from mailgate.bootstrap import build, first_start
from mailgate.entrypoints.api.app import create_app

TENANT = "/api/v1/tenants/home"


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str) -> Iterator[Api]:
    settings = make_settings(
        tmp_path,
        sqlite_url,
        max_servers_per_tenant=2,
        max_api_keys_per_tenant=2,
        max_remote_clients_per_tenant=1,
        max_webhooks_per_tenant=1,
        webhook_allow_private=True,
    )
    c = build(settings)
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        yield Api(client, c)
    c.engine.dispose()


def test_caps_answer_409_and_store_nothing(api: Api) -> None:
    admin = api.admin_token()
    for name in ("one", "two"):
        r = api.request("POST", f"{TENANT}/email-servers", admin, json=password_server(name))
        assert r.status_code == 201, r.text
    r = api.request("POST", f"{TENANT}/email-servers", admin, json=password_server("three"))
    assert r.status_code == 409 and "MAILGATE_MAX_SERVERS_PER_TENANT" in r.json()["detail"]
    assert len(api.request("GET", f"{TENANT}/email-servers", admin).json()["items"]) == 2

    # An import that would create a third is refused as a whole.
    doc = api.request("GET", f"{TENANT}/export", admin).json()
    api.make_tenant(admin, "acme")
    doc["email_servers"].append({**doc["email_servers"][1], "name": "third"})
    r = api.request("POST", "/api/v1/tenants/acme/import", admin, json=doc)
    assert r.status_code == 409, r.text
    assert api.request("GET", "/api/v1/tenants/acme/email-servers", admin).json()["items"] == []

    for i in range(2):
        body = {"name": f"k{i}", "role": "web_service"}
        assert api.request("POST", f"{TENANT}/api-keys", admin, json=body).status_code == 201
    r = api.request("POST", f"{TENANT}/api-keys", admin, json={"name": "k2", "role": "user"})
    assert r.status_code == 409 and "MAILGATE_MAX_API_KEYS_PER_TENANT" in r.json()["detail"]

    r = api.request("PUT", "/api/v1/system/settings", admin, json={"allow_remote_clients": True})
    assert r.status_code == 200
    assert (
        api.request("POST", f"{TENANT}/remote-clients", admin, json={"name": "a"}).status_code
        == 201
    )
    r = api.request("POST", f"{TENANT}/remote-clients", admin, json={"name": "b"})
    assert r.status_code == 409, r.text
    # Another tenant has its own room.
    r = api.request(
        "POST", "/api/v1/tenants/acme/api-keys", admin, json={"name": "k", "role": "user"}
    )
    assert r.status_code == 201


def test_webhooks_are_capped_per_tenant(api: Api) -> None:
    admin = api.admin_token()
    hook = {"url": "https://127.0.0.1:9/hook", "events": ["message.sent"]}
    assert api.request("POST", f"{TENANT}/webhooks", admin, json=hook).status_code == 201
    r = api.request("POST", f"{TENANT}/webhooks", admin, json=hook)
    assert r.status_code == 409 and "MAILGATE_MAX_WEBHOOKS_PER_TENANT" in r.json()["detail"]
    assert len(api.request("GET", f"{TENANT}/webhooks", admin).json()["items"]) == 1
    api.make_tenant(admin, "acme")
    r = api.request("POST", "/api/v1/tenants/acme/webhooks", admin, json=hook)
    assert r.status_code == 201, r.text
