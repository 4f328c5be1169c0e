"""The Gmail API as the transport (README "Delivery transports"), against the suite's own
Gmail server (``tests/api_peers.py``) and authorization server: through the real worker and
the test e-mail endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.api_peers import ApiPeers
from tests.oauth_env import BASE, MAILBOX, Env, make_env, oauth_config
from tests.oauth_server import RunningAuthServer

from mailgate.domain.messages import Outcome
from mailgate.entrypoints.worker import Worker

MESSAGES = "/api/v1/tenants/home/messages"


@pytest.fixture
def env(
    tmp_path: Path, database_url: str, oauth_server: RunningAuthServer, api_peers: ApiPeers
) -> Iterator[Env]:
    yield from make_env(tmp_path, database_url, oauth_server, **api_peers.settings())


@pytest.fixture
def lite(
    tmp_path: Path, sqlite_url: str, oauth_server: RunningAuthServer, api_peers: ApiPeers
) -> Iterator[Env]:
    yield from make_env(tmp_path, sqlite_url, oauth_server, **api_peers.settings())


def add_gmail(env: Env, name: str = "GMAIL", **auth: Any) -> None:
    body = oauth_config(name, provider="google", **auth)
    del body["host"], body["port"], body["authentication"]["directory_tenant_id"]
    body["transport"] = "gmail_api"
    r = env.api.request("POST", BASE, env.admin, json=body)
    assert r.status_code == 201, r.text
    env.authorize(name)


def submit(env: Env, server: str = "GMAIL", **fields: Any) -> str:
    body = {"server": server, "to": ["rcpt@example.org"], "subject": "hello", "text": "hi"}
    r = env.api.request("POST", MESSAGES, env.admin, json={**body, **fields})
    assert r.status_code == 202, r.text
    mid: str = r.json()["id"]
    return mid


def message(env: Env, mid: str) -> dict[str, Any]:
    r = env.api.request("GET", f"{MESSAGES}/{mid}", env.admin)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def deliver(env: Env) -> int:
    return asyncio.run(Worker(env.c, worker_id="gmail-test").run_once())


def run_server_test(env: Env, name: str = "GMAIL", **body: Any) -> dict[str, Any]:
    r = env.api.request("POST", f"{BASE}/{name}/test", env.admin, json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_sends_the_stored_mime_and_delivers_bcc(env: Env, api_peers: ApiPeers) -> None:
    add_gmail(env)
    mid = submit(env, bcc=["hidden@example.org"])
    deliver(env)
    view = message(env, mid)
    assert view["status"] == "sent", view
    assert view["attempts"][-1]["smtp_code"] == 200
    [got] = api_peers.gmail.delivered
    assert got.mailbox == MAILBOX  # users/me: the account that authorized
    assert sorted(got.recipients) == ["hidden@example.org", "rcpt@example.org"]
    stored = env.api.request("GET", f"{MESSAGES}/{mid}/raw", env.admin).content
    assert got.sent == b"Bcc: hidden@example.org\r\n" + stored
    assert b"hidden@example.org" not in got.seen_by_recipients
    [request] = api_peers.gmail.requests
    assert request[1] == "/upload/gmail/v1/users/me/messages/send"
    assert request[2]["content-type"] == "message/rfc822"


def test_rate_limits_are_temporary(lite: Env, api_peers: ApiPeers) -> None:
    add_gmail(lite)
    api_peers.gmail.throttle_gmail(1, 429, "rateLimitExceeded", retry_after="20")
    api_peers.gmail.throttle_gmail(1, 403, "userRateLimitExceeded")
    first = submit(lite, subject="one")
    deliver(lite)
    view = message(lite, first)
    assert view["status"] == "deferred", view
    assert "rateLimitExceeded" in view["last_error"]
    lite.clock.offset += timedelta(seconds=21)
    deliver(lite)
    view = message(lite, first)
    assert view["status"] == "deferred", view  # 403 userRateLimitExceeded: not a refusal
    assert "userRateLimitExceeded" in view["last_error"]
    lite.clock.offset += timedelta(minutes=3)
    deliver(lite)
    assert message(lite, first)["status"] == "sent"


def test_a_token_without_the_send_scope_needs_authorizing_again(
    lite: Env, api_peers: ApiPeers
) -> None:
    add_gmail(lite, scope="https://www.googleapis.com/auth/gmail.readonly")
    result = run_server_test(lite, to="rcpt@example.org")
    assert [(s["step"], s["ok"]) for s in result["steps"]] == [("token", True), ("send", False)]
    assert "insufficientPermissions" in result["steps"][1]["detail"]
    assert "gmail.send" in result["hint"]
    assert lite.status("GMAIL")["state"] == "authorized"  # a test changes nothing
    mid = submit(lite)
    deliver(lite)
    view = message(lite, mid)
    assert view["status"] == "deferred", view
    assert "insufficientPermissions" in view["last_error"]
    assert lite.status("GMAIL")["state"] == "needs_reauthorization"
    result = run_server_test(lite, to="rcpt@example.org")
    assert "gmail.send scope" in result["steps"][0]["detail"]  # why it needs signing in
    r = lite.api.request(
        "PATCH", f"{BASE}/GMAIL", lite.admin, json={"authentication": {"scope": None}}
    )
    assert r.status_code == 200, r.text
    lite.authorize("GMAIL")
    lite.clock.offset += timedelta(minutes=5)
    deliver(lite)
    assert message(lite, mid)["status"] == "sent"


def test_the_server_test_reports_token_and_send(lite: Env, api_peers: ApiPeers) -> None:
    add_gmail(lite)
    dry = run_server_test(lite, mode="dry_run", to="rcpt@example.org")
    assert dry["ok"] and [s["step"] for s in dry["steps"]] == ["token"]
    assert "Google access token" in dry["steps"][0]["detail"]
    assert api_peers.gmail.requests == []
    sent = run_server_test(lite, to="rcpt@example.org")
    assert sent["ok"], sent
    assert sent["steps"][1]["detail"].startswith("200 sent by Gmail as message ")
    assert lite.tokens("GMAIL")["access_token"] not in str(sent)
    transcript = "\n".join(sent["transcript"])
    assert "> POST https://127.0.0.1:" in transcript
    assert "/upload/gmail/v1/users/me/messages/send?uploadType=media" in transcript
    assert ">   Content-Type: message/rfc822" in sent["transcript"]
    # An SMTP-style failure text must not produce SMTP advice for an HTTP answer.
    api_peers.gmail.throttle_gmail(1, 429, "rateLimitExceeded")
    throttled = run_server_test(lite, to="rcpt@example.org")
    assert not throttled["ok"] and "2,000 messages a day" in throttled["hint"]


def test_messages_above_35_mb_are_refused_without_a_request(lite: Env, api_peers: ApiPeers) -> None:
    add_gmail(lite)
    with lite.c.session() as db:
        server = lite.c.servers.resolve(lite.c.servers.get(db, lite.c_home_id(db), "GMAIL"))
    tokens = lite.c.token_provider_for(server)

    async def send() -> Any:
        session = await lite.c.transports.open(server, tokens)
        try:
            raw = b"To: rcpt@example.org\r\nSubject: big\r\n\r\n" + b"x" * (35 * 1024 * 1024)
            return await session.send(MAILBOX, ["rcpt@example.org"], raw)
        finally:
            await session.close()

    result = asyncio.run(send())
    assert result.outcome is Outcome.PERMANENT
    assert "35 MB" in result.text
    assert api_peers.gmail.requests == []
