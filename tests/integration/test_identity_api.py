"""Sign-in, sessions, API keys, users and tenants through the API (README "Roles and
tenants"), on SQLite and PostgreSQL, on an injected clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.clock import TestClock
from tests.conftest import ADMIN_PASSWORD, Api, make_settings, password_server

from mailgate.adapters.db.tables import User
from mailgate.bootstrap import build, first_start
from mailgate.entrypoints.api.app import create_app


@pytest.fixture
def clock() -> TestClock:
    return TestClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def timed_api(tmp_path: Path, database_url: str, clock: TestClock) -> Iterator[Api]:
    c = build(make_settings(tmp_path, database_url, login_max_failures=3), clock=clock)
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        yield Api(client, c)
    c.engine.dispose()


def login(api: Api, username: str, password: str) -> tuple[int, dict[str, str], str]:
    r = api.client.post("/api/v1/auth/login", json={"username": username, "password": password})
    api.client.cookies.clear()
    return r.status_code, dict(r.headers), r.text


def test_sign_in_throttling_sessions_and_logout(timed_api: Api, clock: TestClock) -> None:
    api = timed_api
    wrong = login(api, "admin", "wrong-password")
    unknown = login(api, "nobody", "wrong-password")
    assert wrong[0] == unknown[0] == 401
    assert wrong[2] == unknown[2]  # the same answer: no account enumeration

    login(api, "admin", "wrong-again")
    login(api, "admin", "and-again")
    status, headers, _ = login(api, "admin", ADMIN_PASSWORD)
    assert status == 429  # even the right password waits out the window
    assert int(headers["retry-after"]) > 0
    assert headers["content-type"] == "application/problem+json"
    clock.advance(seconds=301)
    token = api.admin_token()
    api.client.cookies.clear()

    me = api.request("GET", "/api/v1/auth/me", token).json()
    assert me["username"] == "admin" and me["system_admin"] is True and me["kind"] == "user"
    with api.container.session() as db:
        stored = db.scalar(select(User.password_hash).where(User.username == "admin"))
    assert stored and stored.startswith("$argon2id$") and ADMIN_PASSWORD not in stored

    clock.advance(hours=api.container.settings.session_hours, seconds=1)
    assert api.request("GET", "/api/v1/auth/me", token).status_code == 401
    token = api.admin_token()
    api.client.cookies.clear()
    assert api.request("POST", "/api/v1/auth/logout", token).status_code == 204
    assert api.request("GET", "/api/v1/auth/me", token).status_code == 401


def test_api_keys_are_shown_once_and_revocable(api: Api) -> None:
    admin = api.admin_token()
    api.client.cookies.clear()
    r = api.request("POST", "/api/v1/tenants/home/api-keys", admin, json={"name": "erp"})
    assert r.status_code == 201
    key = r.json()
    assert key["role"] == "web_service" and key["token"].startswith("mgk_")
    listed = api.request("GET", "/api/v1/tenants/home/api-keys", admin)
    assert key["token"] not in listed.text and [k["id"] for k in listed.json()["items"]] == [
        key["id"]
    ]
    me = api.request("GET", "/api/v1/auth/me", key["token"]).json()
    assert me == {
        "kind": "api_key",
        "name": "apikey:erp",
        "system_admin": False,
        "roles": {"home": "web_service"},
    }
    path = f"/api/v1/tenants/home/api-keys/{key['id']}"
    assert api.request("DELETE", path, admin).status_code == 204
    assert api.request("GET", "/api/v1/auth/me", key["token"]).status_code == 401
    assert api.request("DELETE", path, admin).status_code == 404


def test_users_crud_and_the_last_system_admin(api: Api) -> None:
    admin = api.admin_token()
    api.make_tenant(admin, "acme")
    body = {
        "username": "olga",
        "email": "Olga@Example.com",
        "password": "first-password",
        "roles": {"acme": "admin", "home": "read_only"},
    }
    api.client.cookies.clear()
    r = api.request("POST", "/api/v1/users", admin, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["roles"] == {"acme": "admin", "home": "read_only"}
    assert "first-password" not in r.text
    assert api.request("POST", "/api/v1/users", admin, json=body).status_code == 409
    olga = api.login("olga", "first-password")
    api.client.cookies.clear()

    r = api.request(
        "PATCH", "/api/v1/users/olga", admin, json={"roles": {"acme": "user"}, "email": None}
    )
    assert r.status_code == 200 and r.json()["roles"] == {"acme": "user"}
    assert r.json()["email"] is None
    # A new password ends the user's sessions.
    r = api.request("PATCH", "/api/v1/users/olga", admin, json={"password": "second-password"})
    assert r.status_code == 200
    assert api.request("GET", "/api/v1/auth/me", olga).status_code == 401
    api.login("olga", "second-password")
    api.client.cookies.clear()

    names = [u["username"] for u in api.request("GET", "/api/v1/users", admin).json()["items"]]
    assert names == ["admin", "olga"]
    r = api.request("DELETE", "/api/v1/users/admin", admin)
    assert r.status_code == 409 and "last system administrator" in r.json()["detail"]
    r = api.request("PATCH", "/api/v1/users/admin", admin, json={"system_admin": False})
    assert r.status_code == 409
    assert api.request("DELETE", "/api/v1/users/olga", admin).status_code == 204
    assert api.request("GET", "/api/v1/users/olga", admin).status_code == 404


def test_tenants_crud_and_delete_takes_everything_along(api: Api) -> None:
    admin = api.admin_token()
    api.client.cookies.clear()
    r = api.request("POST", "/api/v1/tenants", admin, json={"name": "acme", "display_name": "A"})
    assert r.status_code == 201 and r.json()["display_name"] == "A"
    assert api.request("POST", "/api/v1/tenants", admin, json={"name": "acme"}).status_code == 409
    r = api.request("PATCH", "/api/v1/tenants/acme", admin, json={"display_name": "Acme A/S"})
    assert r.json()["display_name"] == "Acme A/S"
    servers = "/api/v1/tenants/acme/email-servers"
    assert api.request("POST", servers, admin, json=password_server()).status_code == 201
    key = api.make_api_key(admin, "acme")
    assert api.request("DELETE", "/api/v1/tenants/acme", admin).status_code == 204
    assert api.request("GET", "/api/v1/tenants/acme", admin).status_code == 404
    assert api.request("GET", "/api/v1/auth/me", key).status_code == 401  # its keys went too
    r = api.request("POST", "/api/v1/tenants", admin, json={"name": "acme"})
    assert r.status_code == 201  # the name is free again, with nothing left over
    assert api.request("GET", servers, admin).json()["items"] == []
