"""OAuth2 and the delivery worker: mail of a configuration that lost its consent waits, the
admins hear about it once, and re-authorizing lets the waiting mail go out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import ADMIN_PASSWORD
from tests.oauth_env import BASE, MAILBOX, Env, make_env, oauth_config
from tests.oauth_server import RunningAuthServer
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.entrypoints.worker import Worker


@pytest.fixture
def env(tmp_path: Path, database_url: str, oauth_server: RunningAuthServer) -> Iterator[Env]:
    yield from make_env(tmp_path, database_url, oauth_server)


def setup_server(env: Env, smtp_servers: SmtpServers, name: str, **auth: Any) -> SmtpServer:
    smtp = smtp_servers.start(
        tls="starttls",
        xoauth2=lambda user, token: env.oauth.server.token_is_live(token, user),
    )
    body = smtp.config(name, authentication=oauth_config(name, **auth)["authentication"])
    body["message_defaults"]["from_address"] = MAILBOX
    r = env.api.request("POST", BASE, env.admin, json=body)
    assert r.status_code == 201, r.text
    return smtp


def submit(env: Env, server: str, subject: str) -> str:
    r = env.api.request(
        "POST",
        "/api/v1/tenants/home/messages",
        env.admin,
        json={"server": server, "to": ["rcpt@example.org"], "subject": subject, "text": "hi"},
    )
    assert r.status_code == 202, r.text
    mid: str = r.json()["id"]
    return mid


def message(env: Env, mid: str) -> dict[str, Any]:
    r = env.api.request("GET", f"/api/v1/tenants/home/messages/{mid}", env.admin)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def run_worker(env: Env) -> int:
    return asyncio.run(Worker(env.c, worker_id="oauth-test").run_once())


def test_revoked_consent_keeps_mail_waiting_until_reauthorized(
    env: Env, smtp_servers: SmtpServers
) -> None:
    r = env.api.request(
        "POST",
        "/api/v1/users",
        env.admin,
        json={
            "username": "ann",
            "email": "ann@example.com",
            "password": "pw-ann-long-enough-1",
            "roles": {"home": "admin"},
        },
    )
    assert r.status_code == 201, r.text
    smtp = setup_server(env, smtp_servers, "O365")
    env.authorize("O365")
    first = submit(env, "O365", "before")
    run_worker(env)
    assert message(env, first)["status"] == "sent"
    smtp.wait_for(1)

    env.oauth.server.revoke()
    env.oauth.server.expire_access_tokens()
    waiting = submit(env, "O365", "while revoked")
    run_worker(env)
    assert env.status("O365")["state"] == "needs_reauthorization"
    assert message(env, waiting)["status"] in ("deferred", "queued")
    # Hours, then days - past the 2-day retry limit - pass: the mail keeps waiting (it is
    # not failed), and nobody is notified again.
    for step in (timedelta(hours=1), timedelta(hours=1), timedelta(days=3)):
        env.clock.offset += step
        run_worker(env)
        env.admin = env.api.login("admin", ADMIN_PASSWORD)  # sessions last 12 hours
        view = message(env, waiting)
        assert view["status"] == "deferred"
        assert "authoriz" in view["last_error"]
    assert [to for to, _s, _t in env.mailer.sent] == ["ann@example.com"]
    assert smtp.count == 1

    env.authorize("O365")
    env.clock.offset += timedelta(minutes=5)
    run_worker(env)
    assert message(env, waiting)["status"] == "sent"
    got = smtp.wait_for(2)
    assert got[1].message["Subject"] == "while revoked"
    assert len(env.mailer.sent) == 1
    metrics = env.api.client.get("/metrics").text
    assert 'mailgate_oauth2_token_requests_total{result="ok"} 2.0' in metrics  # 2 consents
    assert 'mailgate_oauth2_token_requests_total{result="refused"} 1.0' in metrics


def test_client_credentials_delivery(env: Env, smtp_servers: SmtpServers) -> None:
    smtp = setup_server(env, smtp_servers, "APP", grant="client_credentials")
    mid = submit(env, "APP", "app-only")
    run_worker(env)
    assert message(env, mid)["status"] == "sent"
    [got] = smtp.wait_for(1)
    assert got.login == MAILBOX
    assert env.status("APP")["state"] == "authorized"
