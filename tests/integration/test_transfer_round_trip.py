"""Two separate installations - one on SQLite, one on PostgreSQL, each with its own secret key -
hand a tenant back and forth, and the restored password logs in to a real SMTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import Api, make_settings, truncate_all
from tests.oauth_env import BASE, MAILBOX, make_env, oauth_config
from tests.oauth_server import RunningAuthServer
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db.tables import Tenant
from mailgate.bootstrap import Container, build, first_start
from mailgate.entrypoints.api.app import create_app

PASSWORD = "round-trip-Pw-9"
PASSPHRASE = "moving day passphrase"


@pytest.fixture
def installations(
    tmp_path: Path, sqlite_url: str, postgres_database: str
) -> Iterator[tuple[Api, Api]]:
    truncate_all(postgres_database)
    containers: list[Container] = []
    apis: list[Api] = []
    with_clients: list[TestClient] = []
    for name, url in (("sqlite", sqlite_url), ("postgres", postgres_database)):
        c = build(make_settings(tmp_path / name, url, public_base_url=f"http://{name}.test"))
        first_start(c, echo=lambda _m: None)
        client = TestClient(create_app(c))
        client.__enter__()
        containers.append(c)
        with_clients.append(client)
        apis.append(Api(client, c))
    assert containers[0].settings.secret_key != containers[1].settings.secret_key
    yield apis[0], apis[1]
    for client in with_clients:
        client.__exit__(None, None, None)
    for c in containers:
        c.engine.dispose()


def send_test_mail(api: Api, tenant: str, name: str) -> dict[str, Any]:
    """The API's test e-mail, which uses the stored (here: imported) secrets."""
    r = api.request(
        "POST",
        f"/api/v1/tenants/{tenant}/email-servers/{name}/test",
        api.admin_token(),
        json={"to": "b@example.org", "mode": "send"},
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    assert PASSWORD not in r.text
    return result


def test_sqlite_to_postgres_and_back_keeps_the_password_working(
    installations: tuple[Api, Api], smtp_servers: SmtpServers
) -> None:
    first, second = installations
    smtp = smtp_servers.start(tls="starttls", users={"alice": PASSWORD})
    a_admin, b_admin = first.admin_token(), second.admin_token()
    body = smtp.password_config("alice", PASSWORD, name="relay")
    r = first.request("POST", "/api/v1/tenants/home/email-servers", a_admin, json=body)
    assert r.status_code == 201, r.text
    passphrase = {"X-Export-Passphrase": PASSPHRASE}

    r = first.request("GET", "/api/v1/tenants/home/export", a_admin, headers=passphrase)
    assert r.status_code == 200 and PASSWORD.encode() not in r.content
    exported = r.json()
    assert exported["source"]["public_base_url"] == "http://sqlite.test"
    r = second.request(
        "POST", "/api/v1/tenants/home/import", b_admin, json=exported, headers=passphrase
    )
    assert r.status_code == 200, r.text
    assert r.json()["created"] == [{"resource": "email-servers", "name": "relay"}]
    result = send_test_mail(second, "home", "relay")
    assert result["ok"] is True, result
    assert [st["step"] for st in result["steps"] if st["step"] == "auth" and st["ok"]] == ["auth"]
    [msg] = smtp.wait_for(1)
    assert msg.login == "alice" and msg.tls

    # Back again, into a new tenant of the first installation.
    r = second.request("GET", "/api/v1/tenants/home/export", b_admin, headers=passphrase)
    back = r.json()
    assert back["source"]["public_base_url"] == "http://postgres.test"
    assert back["source"]["installation_id"] != exported["source"]["installation_id"]
    first.make_tenant(a_admin, "copy")
    r = first.request("POST", "/api/v1/tenants/copy/import", a_admin, json=back, headers=passphrase)
    assert r.status_code == 200, r.text
    assert send_test_mail(first, "copy", "relay")["ok"] is True
    assert len(smtp.wait_for(2)) == 2
    shown = first.request("GET", "/api/v1/tenants/copy/email-servers/relay", a_admin).json()
    original = first.request("GET", "/api/v1/tenants/home/email-servers/relay", a_admin).json()
    # Not configuration but its history: the copy was tested just now, the original never.
    assert shown["last_test"]["ok"] is True and original["last_test"] is None
    for volatile in ("created_at", "updated_at", "last_test"):
        shown.pop(volatile), original.pop(volatile)
    assert shown == original


def test_oauth2_refresh_token_moves_and_keeps_working(
    tmp_path: Path,
    sqlite_url: str,
    postgres_database: str,
    oauth_server: RunningAuthServer,
    smtp_servers: SmtpServers,
) -> None:
    """Authorized on SQLite, exported with a passphrase, imported on PostgreSQL: the restored
    client secret and refresh token get fresh tokens from the authorization server, and the
    test e-mail authenticates with XOAUTH2 there."""
    truncate_all(postgres_database)
    envs = make_env(tmp_path / "a", sqlite_url, oauth_server)
    env = next(envs)
    smtp = smtp_servers.start(
        tls="starttls", xoauth2=lambda user, token: oauth_server.server.token_is_live(token, user)
    )
    body = smtp.config("O365", authentication=oauth_config("O365")["authentication"])
    assert env.api.request("POST", BASE, env.admin, json=body).status_code == 201
    env.authorize("O365")
    passphrase = {"X-Export-Passphrase": PASSPHRASE}
    r = env.api.request("GET", "/api/v1/tenants/home/export", env.admin, headers=passphrase)
    assert r.status_code == 200
    refresh_token = env.tokens("O365")["refresh_token"]
    assert refresh_token.encode() not in r.content
    doc = r.json()
    next(envs, None)  # the first installation is done

    settings = make_settings(
        tmp_path / "b",
        postgres_database,
        public_base_url="http://b.test",
        **oauth_server.settings(),
    )
    c = build(settings)
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        second = Api(client, c)
        admin = second.admin_token()
        r = second.request(
            "POST", "/api/v1/tenants/home/import", admin, json=doc, headers=passphrase
        )
        assert r.status_code == 200, r.text
        warnings = {(w["name"], w.get("field")) for w in r.json()["warnings"]}
        # Its redirect URI belongs to the first installation.
        assert ("O365", "authentication.redirect_uri") in warnings
        assert (
            second.request("GET", f"{BASE}/O365", admin).json()["oauth2_status"]["state"]
            == "authorized"
        )
        r = second.request("POST", f"{BASE}/O365/oauth2/refresh", admin)
        assert r.status_code == 200, r.text
        assert r.json()["oauth2_status"]["state"] == "authorized"
        with c.session() as db:
            tenant_id = db.scalar(select(Tenant.id).where(Tenant.name == "home"))
            assert tenant_id is not None
            tokens = c.servers.tokens_of(c.servers.get(db, tenant_id, "O365"))
        assert tokens["refresh_token"] != refresh_token  # rotated by the provider
        result = send_test_mail(second, "home", "O365")
        assert result["ok"] is True, result
        assert smtp.auth_attempts[-1] == ("XOAUTH2", MAILBOX)
    c.engine.dispose()
