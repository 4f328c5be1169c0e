"""The audit trail (README "Audit log"): every change with actor, source address and time,
configurations as a field diff with secrets only as "changed", tenant and system views with
filters and cursor pagination."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Api, password_server

AUDIT = "/api/v1/tenants/home/audit"


def entries(api: Api, token: str, url: str = AUDIT, **params: Any) -> list[dict[str, Any]]:
    r = api.request("GET", url, token, params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def actions(items: list[dict[str, Any]]) -> list[str]:
    return [e["action"] for e in reversed(items)]


def test_every_change_is_recorded_with_actor_source_and_time(api: Api) -> None:
    admin = api.admin_token()
    base = "/api/v1/tenants/home"
    # configurations
    body = password_server(host="smtp.example.com", port=587)
    body["authentication"]["password"] = "first-secret"
    assert api.request("POST", f"{base}/email-servers", admin, json=body).status_code == 201
    r = api.request(
        "PATCH",
        f"{base}/email-servers/DEFAULT",
        admin,
        json={"port": 2525, "authentication": {"password": "second-secret"}},
    )
    assert r.status_code == 200, r.text
    body["port"] = 465
    body["protocol"] = "smtps"
    body["authentication"].pop("password")
    assert api.request("PUT", f"{base}/email-servers/DEFAULT", admin, json=body).status_code == 200
    # API keys, remote clients, webhooks, messages
    key = api.request("POST", f"{base}/api-keys", admin, json={"name": "erp"}).json()
    assert api.request("DELETE", f"{base}/api-keys/{key['id']}", admin).status_code == 204
    api.request("PUT", "/api/v1/system/settings", admin, json={"allow_remote_clients": True})
    api.request("POST", f"{base}/remote-clients", admin, json={"name": "plant"})
    api.request("DELETE", f"{base}/remote-clients/plant", admin)
    hook = api.request(
        "POST", f"{base}/webhooks", admin, json={"url": "https://example.com/h"}
    ).json()
    api.request("PATCH", f"{base}/webhooks/{hook['id']}", admin, json={"enabled": False})
    api.request("DELETE", f"{base}/webhooks/{hook['id']}", admin)
    held = [
        api.request(
            "POST",
            f"{base}/messages",
            admin,
            json={"to": ["x@example.com"], "text": "t", "hold": True},
        ).json()["id"]
        for _ in range(3)
    ]
    assert api.request("POST", f"{base}/messages/{held[0]}/cancel", admin).status_code == 200
    bulk = api.request("POST", f"{base}/messages/release", admin, json={"status": "held"}).json()
    assert bulk["changed"] == 2
    # export / import
    exported = api.request("GET", f"{base}/export", admin).json()
    assert api.request("POST", f"{base}/import", admin, json=exported).status_code == 200
    # OAuth2 forget, users and roles, tenants
    oauth = password_server(
        "o365",
        authentication={
            "method": "oauth2",
            "provider": "microsoft",
            "grant": "authorization_code",
            "username": "s@contoso.com",
            "directory_tenant_id": "contoso.onmicrosoft.com",
            "client_id": "app",
            "client_secret": "app-secret",
        },
    )
    api.request("POST", f"{base}/email-servers", admin, json=oauth)
    assert (
        api.request("POST", f"{base}/email-servers/o365/oauth2/authorize", admin).status_code == 200
    )
    assert api.request("DELETE", f"{base}/email-servers/o365/oauth2", admin).status_code == 204
    api.make_tenant(admin, "acme")
    tenant_admin = api.make_user(admin, "tadmin", {"home": "admin"})
    r = api.request("PATCH", "/api/v1/users/tadmin", admin, json={"roles": {"home": "user"}})
    assert r.status_code == 200
    bad = api.client.post("/api/v1/auth/login", json={"username": "admin", "password": "wrong"})
    assert bad.status_code == 401

    tenant_items = entries(api, admin)
    assert actions(tenant_items) == [
        "email_server.create",
        "email_server.update",
        "email_server.update",
        "api_key.create",
        "api_key.revoke",
        "remote_client.create",
        "remote_client.delete",
        "webhook.create",
        "webhook.update",
        "webhook.delete",
        "message.cancel",
        "messages.release",
        "tenant.export",
        "tenant.import",
        "email_server.create",
        "oauth2.authorize",
        "oauth2.forget",
    ]
    for e in tenant_items:
        assert e["actor"] == "admin" and e["source"] == "testclient" and e["tenant"] == "home"
        assert abs(datetime.fromisoformat(e["at"]) - datetime.now(UTC)) < timedelta(minutes=5)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in reversed(tenant_items):
        by_action.setdefault(e["action"], []).append(e)
    patch_changes = by_action["email_server.update"][0]["detail"]["changes"]
    assert patch_changes["port"] == [587, 2525]
    assert patch_changes["authentication.password"] == "changed"
    put_changes = by_action["email_server.update"][1]["detail"]["changes"]
    assert put_changes["protocol"] == ["smtp", "smtps"] and put_changes["port"] == [2525, 465]
    assert "authentication.password" not in put_changes  # omitted: kept
    assert by_action["messages.release"][0]["detail"] == {
        "filter": {"status": "held"},
        "changed": 2,
        "skipped": 0,
    }
    assert by_action["webhook.update"][0]["detail"]["changes"] == {"enabled": [True, False]}
    # No secret value anywhere in the trail.
    text = json.dumps(tenant_items)
    for secret in ("first-secret", "second-secret", "app-secret", key["token"]):
        assert secret not in text
    assert hook["secret"] not in text

    # The system view has the installation's entries too; filters and pagination.
    everything = entries(api, admin, "/api/v1/audit")
    system_actions = [e["action"] for e in everything if e["tenant"] is None]
    for wanted in (
        "system.settings",
        "user.create",
        "user.update",
        "auth.sign_in",
        "auth.sign_in_failed",
    ):
        assert wanted in system_actions, wanted
    failed = entries(api, admin, "/api/v1/audit", action="auth.sign_in_failed")
    assert failed[0]["actor"] == "admin" and "wrong" in failed[0]["detail"]["reason"]
    role_change = entries(api, admin, "/api/v1/audit", action="user.update")[0]
    assert role_change["detail"]["changes"] == {"roles.home": ["admin", "user"]}
    assert {e["action"] for e in entries(api, admin, action="email_server.*")} == {
        "email_server.create",
        "email_server.update",
    }
    assert entries(api, admin, "/api/v1/audit", actor="nobody") == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert entries(api, admin, since=future) == []
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        r = api.request("GET", AUDIT, admin, params=params).json()
        pages.extend(e["id"] for e in r["items"])
        cursor = r["next_cursor"]
        if cursor is None:
            break
    assert pages == [e["id"] for e in tenant_items]

    # Who may read: the tenant's admins, and system administrators for the whole view.
    assert api.request("GET", AUDIT, tenant_admin).status_code == 403  # now a user
    home_admin = api.make_user(admin, "hadmin", {"home": "admin"})
    assert api.request("GET", AUDIT, home_admin).status_code == 200
    assert api.request("GET", "/api/v1/audit", home_admin).status_code == 403
    assert api.request("GET", "/api/v1/tenants/acme/audit", home_admin).status_code == 404


def test_an_api_key_is_an_actor(api: Api) -> None:
    admin = api.admin_token()
    api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    key = api.make_api_key(admin, "home", "user")
    held = api.request(
        "POST",
        "/api/v1/tenants/home/messages",
        key,
        json={"to": ["x@example.com"], "text": "t", "hold": True},
    ).json()["id"]
    api.request("POST", f"/api/v1/tenants/home/messages/{held}/cancel", key)
    (entry,) = entries(api, admin, action="message.cancel")
    assert entry["actor"] == "apikey:k-user" and entry["detail"] == {
        "id": held,
        "status": "cancelled",
    }
