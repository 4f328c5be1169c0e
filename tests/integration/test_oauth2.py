"""OAuth2 of e-mail servers against the local authorization server (tests/oauth_server.py).

The test plays the browser: it asks mailgate for the authorization URL, consents at the
local server, and brings the redirect back to ``/settings/oauth2code``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select
from tests.oauth_env import BASE, MAILBOX, REDIRECT, Env, make_env, oauth_config
from tests.oauth_server import RunningAuthServer, query_of

from mailgate.adapters.db.tables import OAuth2Authorization
from mailgate.domain.oauth2 import NeedsAuthorization, TokenEndpointDown
from mailgate.services.email_servers import SYSTEM_SERVER_NAME


@pytest.fixture
def env(tmp_path: Path, database_url: str, oauth_server: RunningAuthServer) -> Iterator[Env]:
    """On SQLite and on PostgreSQL: for what touches locking and transactions."""
    yield from make_env(tmp_path, database_url, oauth_server)


@pytest.fixture
def lite(tmp_path: Path, sqlite_url: str, oauth_server: RunningAuthServer) -> Iterator[Env]:
    """SQLite only: for what does not depend on the database engine."""
    yield from make_env(tmp_path, sqlite_url, oauth_server)


def test_authorization_code_flow_stores_tokens_and_spends_the_state(env: Env) -> None:
    assert env.status()["state"] == "not_authorized"
    url = env.authorize_url()
    parts = urlsplit(url)
    assert parts.path == "/ms/contoso-tenant/oauth2/v2.0/authorize"
    q = query_of(url)
    assert q["response_type"] == "code"
    assert q["response_mode"] == "query"
    assert q["client_id"] == "mailgate-app"
    assert q["redirect_uri"] == REDIRECT
    assert q["scope"] == "offline_access https://outlook.office.com/SMTP.Send"
    assert q["code_challenge_method"] == "S256"
    assert len(q["state"]) >= 32

    redirect = env.oauth.consent(url)
    r = env.callback(redirect)
    assert r.status_code == 303
    target = r.headers["location"]
    assert target.startswith("/ui/email-servers/DEFAULT?")
    assert query_of(target)["tenant"] == "home"
    assert query_of(target)["oauth2"] == "ok"

    status = env.status()
    assert status["state"] == "authorized"
    assert status["access_token_expires_at"] is not None
    tokens = env.tokens()
    assert tokens["access_token"].startswith("at-")
    assert tokens["refresh_token"].startswith("rt-")
    # Secrets and tokens never leave through the API.
    body = env.api.request("GET", f"{BASE}/DEFAULT", env.admin).text
    for secret in (tokens["access_token"], tokens["refresh_token"], "app-secret-value"):
        assert secret not in body
    row = env.server_row()
    assert env.oauth.server.token_is_live(env.c.oauth2.tokens.access_token(row.id), MAILBOX)

    # Replay of the same redirect: 400, nothing changes.
    again = env.callback(redirect)
    assert again.status_code == 400
    assert again.headers["content-type"].startswith("application/problem+json")
    assert env.tokens() == tokens


def test_bad_state_is_refused_and_stores_nothing(env: Env) -> None:
    url = env.authorize_url()
    redirect = env.oauth.consent(url)
    q = query_of(redirect)
    for bad in ("", "x" * 43, q["state"][:-1] + ("A" if q["state"][-1] != "A" else "B")):
        r = env.api.client.get(
            "/settings/oauth2code", params={"code": q["code"], "state": bad}, follow_redirects=False
        )
        assert r.status_code == 400, r.text
        assert r.json()["status"] == 400
    # Expired: the same, genuine state 11 minutes later.
    env.clock.offset = timedelta(minutes=11)
    r = env.callback(redirect)
    assert r.status_code == 400
    assert "expired" in r.json()["detail"]
    assert env.tokens() == {}
    assert env.status()["state"] == "not_authorized"
    with env.c.session() as db:
        pending = db.scalars(select(OAuth2Authorization)).all()
        assert [p.used_at for p in pending] == [None]


def test_state_is_bound_to_its_server(lite: Env) -> None:
    r = lite.api.request("POST", BASE, lite.admin, json=oauth_config("OTHER"))
    assert r.status_code == 201, r.text
    lite.authorize("OTHER")
    assert lite.status("OTHER")["state"] == "authorized"
    assert lite.status("DEFAULT")["state"] == "not_authorized"


def test_provider_error_is_shown_on_the_ui_page(lite: Env) -> None:
    lite.oauth.server.consent_decision = "deny"
    r = lite.callback(lite.oauth.consent(lite.authorize_url()))
    assert r.status_code == 303
    q = query_of(r.headers["location"])
    assert q["oauth2"] == "error"
    assert "AADSTS65004" in q["message"]
    assert lite.status()["state"] == "not_authorized"
    assert "access_denied" in lite.status()["last_error"]


def test_wrong_client_secret_fails_the_exchange_clearly(lite: Env) -> None:
    r = lite.api.request(
        "PATCH",
        f"{BASE}/DEFAULT",
        lite.admin,
        json={"authentication": {"client_secret": "wrong"}},
    )
    assert r.status_code == 200, r.text
    r = lite.callback(lite.oauth.consent(lite.authorize_url()))
    q = query_of(r.headers["location"])
    assert q["oauth2"] == "error"
    assert "AADSTS7000215" in q["message"]
    assert "wrong" not in r.headers["location"]
    assert lite.tokens() == {}


def test_expiry_refreshes_once_and_stores_the_rotated_refresh_token(env: Env) -> None:
    env.authorize()
    server_id = env.server_row().id
    first = env.tokens()
    # Reused until shortly before expiry: no token request.
    assert env.c.oauth2.tokens.access_token(server_id) == first["access_token"]
    assert env.oauth.server.refresh_requests() == []

    env.clock.offset = timedelta(minutes=56)  # within the 5-minute margin of a 1h token
    token = env.c.oauth2.tokens.access_token(server_id)
    second = env.tokens()
    assert token == second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert len(env.oauth.server.refresh_requests()) == 1
    assert env.oauth.server.refresh_requests()[0].form["refresh_token"] == first["refresh_token"]
    assert env.oauth.server.token_is_live(token, MAILBOX)
    assert env.c.oauth2.tokens.access_token(server_id) == token
    assert len(env.oauth.server.refresh_requests()) == 1

    # A forced refresh after a rejected token (SMTP 535) refreshes once more ...
    forced = env.c.oauth2.tokens.access_token(server_id, force_refresh=True, rejected=token)
    assert forced != token
    assert len(env.oauth.server.refresh_requests()) == 2
    # ... but not when the rejected token was already replaced by someone else.
    assert env.c.oauth2.tokens.access_token(server_id, force_refresh=True, rejected=token) == forced
    assert len(env.oauth.server.refresh_requests()) == 2


def test_revoked_grant_needs_reauthorization_and_notifies_each_admin_once(env: Env) -> None:
    for username, role, email in (
        ("ann", "admin", "ann@example.com"),
        ("bob", "admin", "bob@example.com"),
        ("carl", "user", "carl@example.com"),
    ):
        r = env.api.request(
            "POST",
            "/api/v1/users",
            env.admin,
            json={
                "username": username,
                "email": email,
                "password": f"pw-{username}-long-enough-1",
                "roles": {"home": role},
            },
        )
        assert r.status_code == 201, r.text
    env.authorize()
    server_id = env.server_row().id
    assert env.oauth.server.revoke() == 1
    env.clock.offset = timedelta(hours=2)
    with pytest.raises(NeedsAuthorization) as caught:
        env.c.oauth2.tokens.access_token(server_id)
    assert "AADSTS50173" in caught.value.detail
    status = env.status()
    assert status["state"] == "needs_reauthorization"
    assert "invalid_grant" in status["last_error"]
    assert "AADSTS50173" in status["last_error"]
    # Later calls fail fast, without the token endpoint and without more mail.
    with pytest.raises(NeedsAuthorization):
        env.c.oauth2.tokens.access_token(server_id)
    env.c.oauth2.keeper.run_once()
    assert len(env.oauth.server.refresh_requests()) == 1
    assert sorted(to for to, _s, _t in env.mailer.sent) == ["ann@example.com", "bob@example.com"]
    _to, subject, text = env.mailer.sent[0]
    assert "DEFAULT" in subject
    assert "AADSTS50173" in text
    assert "/ui/email-servers/DEFAULT?tenant=home" in text

    # Re-authorizing makes the configuration usable again.
    env.authorize()
    assert env.status()["state"] == "authorized"
    assert env.status()["last_error"] is None
    assert env.oauth.server.token_is_live(env.c.oauth2.tokens.access_token(server_id), MAILBOX)
    assert len(env.mailer.sent) == 2


def add_admin(env: Env, username: str) -> None:
    r = env.api.request(
        "POST",
        "/api/v1/users",
        env.admin,
        json={
            "username": username,
            "email": f"{username}@example.com",
            "password": f"pw-{username}-long-enough-1",
            "roles": {"home": "admin"},
        },
    )
    assert r.status_code == 201, r.text


def break_authorization(env: Env) -> None:
    env.authorize()
    env.oauth.server.revoke()
    env.clock.offset += timedelta(hours=2)
    with pytest.raises(NeedsAuthorization):
        env.c.oauth2.tokens.access_token(env.server_row().id)


def test_notice_waits_for_the_system_server_and_goes_out_once(env: Env) -> None:
    add_admin(env, "ann")
    env.mailer.down = True
    break_authorization(env)
    env.c.oauth2.keeper.run_once()
    assert env.mailer.sent == []
    # The system server is back: the keeper's next rounds send the notice, once.
    env.mailer.down = False
    env.clock.offset += timedelta(minutes=5)
    env.c.oauth2.keeper.run_once()
    env.clock.offset += timedelta(minutes=5)
    env.c.oauth2.keeper.run_once()
    assert [to for to, _s, _t in env.mailer.sent] == ["ann@example.com"]
    assert "AADSTS50173" in env.mailer.sent[0][2]


def test_notice_is_dropped_when_the_server_works_again_first(lite: Env) -> None:
    add_admin(lite, "ann")
    lite.mailer.down = True
    break_authorization(lite)
    lite.c.oauth2.keeper.run_once()
    lite.authorize()
    lite.mailer.down = False
    lite.clock.offset += timedelta(minutes=5)
    lite.c.oauth2.keeper.run_once()
    assert lite.mailer.sent == []


def test_notice_is_given_up_after_two_days(lite: Env) -> None:
    add_admin(lite, "ann")
    lite.mailer.down = True
    break_authorization(lite)
    for _ in range(3):
        lite.clock.offset += timedelta(days=1)
        lite.c.oauth2.keeper.run_once()
    lite.mailer.down = False
    lite.clock.offset += timedelta(hours=2)
    lite.c.oauth2.keeper.run_once()
    assert lite.mailer.sent == []


def test_token_endpoint_down_is_temporary_with_backoff(env: Env) -> None:
    env.authorize()
    server_id = env.server_row().id
    env.oauth.server.outage = 503
    env.clock.offset = timedelta(hours=2)
    with pytest.raises(TokenEndpointDown) as first:
        env.c.oauth2.tokens.access_token(server_id)
    assert first.value.retry_at > env.clock()
    calls = len(env.oauth.server.requests)
    # Within the backoff nobody hammers the endpoint.
    with pytest.raises(TokenEndpointDown):
        env.c.oauth2.tokens.access_token(server_id)
    assert len(env.oauth.server.requests) == calls
    status = env.status()
    assert status["state"] == "authorized"
    assert "503" in status["last_error"]
    # The second failure waits longer than the first.
    env.clock.offset += timedelta(minutes=1)
    with pytest.raises(TokenEndpointDown) as second:
        env.c.oauth2.tokens.access_token(server_id)
    assert second.value.retry_at - env.clock() > first.value.retry_at - (
        env.clock() - timedelta(minutes=1)
    )
    env.oauth.server.outage = None
    env.clock.offset += timedelta(hours=1)
    token = env.c.oauth2.tokens.access_token(server_id)
    assert env.oauth.server.token_is_live(token, MAILBOX)
    assert env.status()["last_error"] is None
    assert env.mailer.sent == []


def test_client_credentials_needs_no_browser(env: Env) -> None:
    r = env.api.request(
        "POST", BASE, env.admin, json=oauth_config("APP", grant="client_credentials")
    )
    assert r.status_code == 201, r.text
    r = env.api.request("POST", f"{BASE}/APP/oauth2/authorize", env.admin)
    assert r.status_code == 409
    row = env.server_row("APP")
    token = env.c.oauth2.tokens.access_token(row.id)
    assert env.oauth.server.token_is_live(token, MAILBOX)
    assert not env.oauth.server.token_is_live(token, "someone-else@example.com")
    request = env.oauth.server.requests[-1]
    assert request.grant_type == "client_credentials"
    assert request.form["scope"] == "https://outlook.office365.com/.default"
    assert request.path == "/ms/contoso-tenant/oauth2/v2.0/token"
    assert env.status("APP")["state"] == "authorized"
    assert "refresh_token" not in env.tokens("APP")
    assert env.c.oauth2.tokens.access_token(row.id) == token  # reused until near expiry
    # A wrong secret is a configuration error, not a re-authorization.
    r = env.api.request(
        "PATCH", f"{BASE}/APP", env.admin, json={"authentication": {"client_secret": "nope"}}
    )
    assert r.status_code == 200
    r = env.api.request("POST", f"{BASE}/APP/oauth2/refresh", env.admin)
    assert r.status_code == 409
    assert "AADSTS7000215" in r.json()["detail"]
    assert env.status("APP")["state"] == "error"
    with pytest.raises(NeedsAuthorization):
        env.c.oauth2.tokens.access_token(row.id)
    # The fix - a new secret - makes it usable again without any other step.
    r = env.api.request(
        "PATCH",
        f"{BASE}/APP",
        env.admin,
        json={"authentication": {"client_secret": "app-secret-value"}},
    )
    assert r.status_code == 200
    assert r.json()["oauth2_status"]["last_error"] is None
    env.clock.offset = timedelta(hours=2)
    assert env.oauth.server.token_is_live(env.c.oauth2.tokens.access_token(row.id), MAILBOX)
    assert env.status("APP")["state"] == "authorized"


def test_refresh_and_forget_endpoints(env: Env) -> None:
    r = env.api.request("POST", f"{BASE}/DEFAULT/oauth2/refresh", env.admin)
    assert r.status_code == 409  # not authorized yet
    env.authorize()
    before = env.tokens()
    r = env.api.request("POST", f"{BASE}/DEFAULT/oauth2/refresh", env.admin)
    assert r.status_code == 200, r.text
    assert r.json()["oauth2_status"]["state"] == "authorized"
    assert env.tokens()["refresh_token"] != before["refresh_token"]
    assert before["access_token"] not in r.text
    r = env.api.request("DELETE", f"{BASE}/DEFAULT/oauth2", env.admin)
    assert r.status_code == 204
    assert env.tokens() == {}
    assert env.status()["state"] == "not_authorized"


def test_answers_are_the_services_unchanged(lite: Env) -> None:
    """The response models (schemas/out/) pass the services' JSON through unchanged."""

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    r = lite.api.request("POST", f"{BASE}/DEFAULT/oauth2/authorize", lite.admin)
    assert list(r.json()) == ["authorization_url"]
    lite.authorize()
    r = lite.api.request("POST", f"{BASE}/DEFAULT/oauth2/refresh", lite.admin)
    assert r.status_code == 200, r.text
    assert same(r.json(), lite.c.servers.view(lite.server_row()))

    system = "/api/v1/system/email-server"
    body = oauth_config()
    del body["name"]
    assert lite.api.request("PUT", system, lite.admin, json=body).status_code in (200, 201)
    r = lite.api.request("POST", f"{system}/oauth2/authorize", lite.admin)
    assert list(r.json()) == ["authorization_url"]
    assert lite.callback(lite.oauth.consent(r.json()["authorization_url"])).status_code == 303
    r = lite.api.request("POST", f"{system}/oauth2/refresh", lite.admin)
    assert r.status_code == 200, r.text
    with lite.c.session() as db:
        view = lite.c.servers.view(lite.c.servers.get(db, None, SYSTEM_SERVER_NAME))
    assert "name" not in view and same(r.json(), view)


def test_other_tenants_and_roles(lite: Env) -> None:
    lite.api.make_tenant(lite.admin, "acme")
    stranger = lite.api.make_user(lite.admin, "stranger", {"acme": "admin"})
    reader = lite.api.make_user(lite.admin, "reader", {"home": "read_only"})
    for method, path in (
        ("POST", "oauth2/authorize"),
        ("POST", "oauth2/refresh"),
        ("DELETE", "oauth2"),
    ):
        r = lite.api.request(method, f"{BASE}/DEFAULT/{path}", stranger)
        assert r.status_code == 404, r.text
        r = lite.api.request(method, f"/api/v1/tenants/acme/email-servers/DEFAULT/{path}", stranger)
        assert r.status_code == 404, r.text
        r = lite.api.request(method, f"{BASE}/DEFAULT/{path}", reader)
        assert r.status_code == 403, r.text
    lite.api.client.cookies.clear()
    r = lite.api.request("POST", f"{BASE}/DEFAULT/oauth2/authorize")
    assert r.status_code == 401


def test_keeper_refreshes_idle_configurations(lite: Env) -> None:
    lite.authorize()
    assert lite.c.oauth2.keeper.run_once() == 0
    lite.clock.offset = timedelta(days=8)
    assert lite.c.oauth2.keeper.run_once() == 1
    assert len(lite.oauth.server.refresh_requests()) == 1
    assert lite.c.oauth2.keeper.run_once() == 0
    last_used = lite.server_row().refresh_token_last_used_at
    assert last_used is not None
    assert abs(last_used - lite.clock()) < timedelta(minutes=1)


def test_expiring_client_secret_shows_a_warning(lite: Env) -> None:
    soon = datetime.now(UTC) + timedelta(days=10)
    lite.oauth.server.client_secret_expires_at = int(soon.timestamp())
    lite.authorize()
    warning = lite.status()["warning"]
    assert warning is not None
    assert soon.strftime("%Y-%m-%d") in warning


def test_google_and_custom_providers(lite: Env) -> None:
    r = lite.api.request(
        "POST",
        BASE,
        lite.admin,
        json=oauth_config("GMAIL", provider="google", directory_tenant_id=None),
    )
    assert r.status_code == 201, r.text
    url = lite.authorize_url("GMAIL")
    assert url.startswith(lite.oauth.google_authorize_url + "?")
    q = query_of(url)
    assert q["scope"] == "https://mail.google.com/"
    assert q["access_type"] == "offline"
    assert q["prompt"] == "consent"
    lite.authorize("GMAIL")
    assert lite.oauth.server.requests[-1].path == "/google/token"

    custom = oauth_config(
        "CUSTOM",
        provider="custom",
        directory_tenant_id=None,
        authorize_url=lite.oauth.base_url + "/idp/authorize",
        token_url=lite.oauth.base_url + "/idp/token",
        scope="smtp",
    )
    r = lite.api.request("POST", BASE, lite.admin, json=custom)
    assert r.status_code == 201, r.text
    lite.authorize("CUSTOM")
    assert lite.oauth.server.requests[-1].path == "/idp/token"
    assert lite.status("CUSTOM")["state"] == "authorized"


_REFRESHER = """
import pathlib, sys, time
from mailgate.bootstrap import build
from mailgate.config import Settings
c = build(Settings())
server_id, go = int(sys.argv[1]), pathlib.Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
print(c.oauth2.tokens.access_token(server_id), flush=True)
"""


def test_two_processes_refreshing_at_once_spend_the_refresh_token_once(
    env: Env, tmp_path: Path, database_url: str
) -> None:
    # Tokens that are due at once (1 s < the 5-minute margin), and a slow token endpoint, so
    # both processes want to refresh and the second arrives while the first is still at it.
    env.oauth.server.access_token_ttl = 1
    env.authorize()
    server_id = env.server_row().id
    env.oauth.server.access_token_ttl = 3600  # the refreshed token is good for an hour
    env.oauth.server.token_delay = 0.5
    settings = env.c.settings
    child_env = {
        **os.environ,
        "MAILGATE_DATABASE_URL": database_url,
        "MAILGATE_SECRET_KEY": settings.secret_key or "",
        "MAILGATE_DATA_DIR": str(tmp_path / "child"),
        "MAILGATE_OAUTH_MICROSOFT_AUTHORITY": settings.oauth_microsoft_authority,
        "MAILGATE_OAUTH_CA_BUNDLE": str(settings.oauth_ca_bundle),
    }
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _REFRESHER, str(server_id), str(go)],
            env=child_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:  # both have built their container; now let them race
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    tokens = [out.strip() for out, _err in outputs]
    assert tokens[0] == tokens[1]
    assert env.oauth.server.token_is_live(tokens[0], MAILBOX)
    assert len(env.oauth.server.refresh_requests()) == 1
    assert all(r.status == 200 for r in env.oauth.server.requests)
    assert env.tokens()["access_token"] == tokens[0]


def test_keeper_thread_refreshes_in_the_background(lite: Env) -> None:
    from mailgate.entrypoints.keeper import TokenKeeper

    lite.authorize()
    lite.clock.offset = timedelta(days=8)
    keeper = TokenKeeper(lite.c.oauth2.keeper, interval_s=0.05)
    keeper.start()
    try:
        deadline = time.monotonic() + 10
        while not lite.oauth.server.refresh_requests() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        keeper.stop()
    assert len(lite.oauth.server.refresh_requests()) == 1


def test_system_server_authorizes_through_its_own_endpoints(lite: Env) -> None:
    system = "/api/v1/system/email-server"
    body = oauth_config("SYSTEM")
    del body["name"]
    r = lite.api.request("PUT", system, lite.admin, json=body)
    assert r.status_code in (200, 201), r.text
    user = lite.api.make_user(lite.admin, "ann", {"home": "admin"})
    assert lite.api.request("POST", f"{system}/oauth2/authorize", user).status_code == 403
    r = lite.api.request("POST", f"{system}/oauth2/authorize", lite.admin)
    assert r.status_code == 200, r.text
    back = lite.callback(lite.oauth.consent(r.json()["authorization_url"]))
    assert back.status_code == 303
    assert back.headers["location"].startswith("/ui/system-email-server?oauth2=ok")
    status = lite.api.request("GET", system, lite.admin).json()["oauth2_status"]
    assert status["state"] == "authorized"
    r = lite.api.request("POST", f"{system}/oauth2/refresh", lite.admin)
    assert r.status_code == 200, r.text
    assert len(lite.oauth.server.refresh_requests()) == 1
    assert lite.api.request("DELETE", f"{system}/oauth2", user).status_code == 403
    assert lite.api.request("DELETE", f"{system}/oauth2", lite.admin).status_code == 204
    status = lite.api.request("GET", system, lite.admin).json()["oauth2_status"]
    assert status["state"] == "not_authorized"


def test_the_audit_trail_names_who_authorized_and_who_consented(lite: Env) -> None:
    """README "Audit log": the admin who started the authorization, and the account that
    consented at the provider (from the access token's upn; never the token)."""
    lite.oauth.server.jwt_for_all = True
    redirect = lite.oauth.consent(lite.authorize_url())
    assert lite.callback(redirect).status_code == 303
    r = lite.api.request(
        "GET", "/api/v1/tenants/home/audit", lite.admin, params={"action": "oauth2.*"}
    )
    consent, started = r.json()["items"][:2]
    assert started["action"] == "oauth2.authorize" and started["actor"] == "admin"
    assert consent["action"] == "oauth2.consent"
    assert consent["detail"]["account"] == MAILBOX
    assert consent["actor"] == f"oauth2:{MAILBOX}"
    assert lite.tokens()["access_token"] not in r.text


def test_a_refused_refresh_is_a_server_needs_reauthorization_event(lite: Env) -> None:
    """README "Webhooks": the state change and its event are one transaction."""
    from sqlalchemy import select

    from mailgate.adapters.db.tables import WebhookEndpoint, WebhookEvent

    with lite.c.session() as db:
        db.add(
            WebhookEndpoint(
                id="wh_oauth",
                tenant_id=lite.c_home_id(db),
                url="https://example.com/hook",
                events=["server.needs_reauthorization"],
                enabled=True,
                secret_enc="unused",
                created_at=lite.clock(),
                updated_at=lite.clock(),
            )
        )
    lite.authorize()
    server_id = lite.server_row().id
    assert lite.oauth.server.revoke() == 1
    lite.clock.offset = timedelta(hours=2)
    with pytest.raises(NeedsAuthorization):
        lite.c.oauth2.tokens.access_token(server_id)
    with pytest.raises(NeedsAuthorization):
        lite.c.oauth2.tokens.access_token(server_id)  # no second incident, no second event
    with lite.c.sessions() as db:
        (event,) = db.scalars(select(WebhookEvent))
    assert event.type == "server.needs_reauthorization"
    data = event.payload["data"]
    assert data["server"] == "DEFAULT" and data["tenant"] == "home"
    assert data["state"] == "needs_reauthorization" and "invalid_grant" in data["reason"]
