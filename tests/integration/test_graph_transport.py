"""Microsoft Graph as the transport (README "Delivery transports"), against the suite's own
Graph server (``tests/api_peers.py``) and authorization server: through the real worker
(outbox -> delivery) and the test e-mail endpoint."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.api_peers import ApiPeers
from tests.oauth_env import BASE, MAILBOX, Env, make_env, oauth_config
from tests.oauth_server import RunningAuthServer

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


def add_graph(env: Env, name: str = "GRAPH", *, limits: Any = None, **auth: Any) -> None:
    body = oauth_config(name, **auth)
    del body["host"], body["port"]
    body["transport"] = "microsoft_graph"
    if limits:
        body["limits"] = limits
    r = env.api.request("POST", BASE, env.admin, json=body)
    assert r.status_code == 201, r.text
    if body["authentication"]["grant"] == "authorization_code":
        env.authorize(name)


def submit(env: Env, server: str = "GRAPH", **fields: Any) -> str:
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


def raw(env: Env, mid: str) -> bytes:
    r = env.api.request("GET", f"{MESSAGES}/{mid}/raw", env.admin)
    assert r.status_code == 200, r.text
    content: bytes = r.content
    return content


def deliver(env: Env) -> int:
    return asyncio.run(Worker(env.c, worker_id="graph-test").run_once())


def run_server_test(env: Env, name: str = "GRAPH", **body: Any) -> dict[str, Any]:
    r = env.api.request("POST", f"{BASE}/{name}/test", env.admin, json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_delegated_sends_the_stored_mime_and_delivers_bcc(env: Env, api_peers: ApiPeers) -> None:
    add_graph(env)
    mid = submit(env, cc=["cc@example.org"], bcc=["hidden@example.org"], hold=True)
    deliver(env)
    assert message(env, mid)["status"] == "held" and api_peers.graph.requests == []
    r = env.api.request("POST", f"{MESSAGES}/{mid}/release", env.admin)
    assert r.status_code == 200, r.text
    deliver(env)
    view = message(env, mid)
    assert view["status"] == "sent", view
    assert view["attempts"][-1]["smtp_code"] == 202
    [got] = api_peers.graph.delivered
    assert got.via == "sendMail" and got.mailbox == MAILBOX
    assert sorted(got.recipients) == ["cc@example.org", "hidden@example.org", "rcpt@example.org"]
    assert got.bcc == ["hidden@example.org"]
    stored = raw(env, mid)
    assert b"hidden@example.org" not in stored  # the outbox keeps Bcc in the envelope only
    # The stored MIME went out unchanged, with only a Bcc header in front of it ...
    assert got.sent == b"Bcc: hidden@example.org\r\n" + stored
    # ... which the provider does not show to the other recipients.
    assert b"hidden@example.org" not in got.seen_by_recipients
    [send] = [r for r in api_peers.graph.requests if r[1].endswith("/sendMail")]
    assert send[2]["content-type"] == "text/plain"


def test_large_message_goes_through_a_draft_and_upload_sessions(
    env: Env, api_peers: ApiPeers
) -> None:
    add_graph(env, grant="client_credentials")
    big = os.urandom(6 * 1024 * 1024)  # 6 MB: 8 MB in base64, twice Graph's request limit
    small = os.urandom(100 * 1024)
    mid = submit(
        env,
        bcc=["hidden@example.org"],
        attachments=[
            {
                "filename": "big.bin",
                "content_type": "application/octet-stream",
                "content_base64": base64.b64encode(big).decode(),
            },
            {
                "filename": "small.pdf",
                "content_type": "application/pdf",
                "content_base64": base64.b64encode(small).decode(),
            },
        ],
    )
    deliver(env)
    assert message(env, mid)["status"] == "sent", message(env, mid)
    graph = api_peers.graph
    [got] = graph.delivered
    assert got.via == "draft"
    assert sorted(got.recipients) == ["hidden@example.org", "rcpt@example.org"]
    attached = {
        name: (ctype, hashlib.sha256(data).hexdigest()) for name, ctype, data in got.attachments
    }
    assert attached == {
        "big.bin": ("application/octet-stream", hashlib.sha256(big).hexdigest()),
        "small.pdf": ("application/pdf", hashlib.sha256(small).hexdigest()),
    }
    assert got.message["Subject"] == "hello"
    [upload] = graph.uploads.values()
    assert upload.ranges[0][0] == 0 and upload.ranges[-1][1] == len(big) - 1
    assert all(end - start + 1 <= 4 * 1024 * 1024 for start, end in upload.ranges)
    assert len(upload.ranges) == 2
    puts = [r for r in graph.requests if r[0] == "PUT"]
    assert len(puts) == 2 and all("authorization" not in r[2] for r in puts)
    assert all(size <= 4 * 1024 * 1024 for _m, _p, _h, size in graph.requests)
    assert graph.drafts == {}  # sent, not left behind


def test_a_burst_never_exceeds_four_concurrent_requests_per_mailbox(
    lite: Env, api_peers: ApiPeers
) -> None:
    add_graph(lite, grant="client_credentials", limits={"max_connections": 10})
    api_peers.graph.delay_s = 0.25
    ids = [submit(lite, subject=f"burst {i}") for i in range(12)]
    deliver(lite)
    assert {message(lite, mid)["status"] for mid in ids} == {"sent"}
    assert len(api_peers.graph.delivered) == 12
    # Ten sessions ran at once, yet Graph saw at most four requests for the mailbox.
    assert api_peers.graph.max_inflight[MAILBOX] == 4


def test_throttling_defers_for_retry_after_and_keeps_the_mailbox_quiet(
    lite: Env, api_peers: ApiPeers
) -> None:
    add_graph(lite, grant="client_credentials", limits={"max_connections": 1})
    api_peers.graph.throttle_graph(1, 429, retry_after="30")
    first, second = submit(lite, subject="one"), submit(lite, subject="two")
    deliver(lite)
    now = lite.clock()
    for mid in (first, second):
        view = message(lite, mid)
        assert view["status"] == "deferred", view
        due = view["next_attempt_at"]
        waited = (lite.c.clock().fromisoformat(due.replace("Z", "+00:00")) - now).total_seconds()
        assert 20 <= waited <= 31, waited  # as Retry-After says, not the 60 s backoff
    # One request got the 429; the other message did not knock again within the window.
    assert len([r for r in api_peers.graph.requests if r[1].endswith("/sendMail")]) == 1
    assert "429" in message(lite, first)["last_error"]
    lite.clock.offset += timedelta(seconds=31)
    deliver(lite)
    assert {message(lite, m)["status"] for m in (first, second)} == {"sent"}
    # 503 with an HTTP-date Retry-After is temporary too.
    api_peers.graph.throttle_graph(1, 503, retry_after="Wed, 21 Oct 2099 07:28:00 GMT")
    third = submit(lite, subject="three")
    deliver(lite)
    assert message(lite, third)["status"] == "deferred"


def test_a_429_pauses_the_whole_configuration_until_retry_after(
    lite: Env, api_peers: ApiPeers
) -> None:
    # README "Provider limits, pauses and fairness": HTTP 429 is a throttling answer.
    add_graph(lite, grant="client_credentials", limits={"max_connections": 1})
    api_peers.graph.throttle_graph(1, 429, retry_after="45")
    ids = [submit(lite, subject=f"m{i}") for i in range(3)]
    deliver(lite)
    r = lite.api.request("GET", f"{BASE}/GRAPH", lite.admin)
    delivery = r.json()["delivery"]
    assert delivery["state"] == "paused", delivery
    until = datetime.fromisoformat(delivery["paused_until"].replace("Z", "+00:00"))
    assert abs((until - lite.clock()).total_seconds() - 45) < 3  # the clock ticks here
    assert "throttling" in delivery["reason"] and "429" in delivery["last_reply"]
    assert {message(lite, mid)["status"] for mid in ids} == {"deferred"}
    assert len([q for q in api_peers.graph.requests if q[1].endswith("/sendMail")]) == 1
    lite.clock.offset += timedelta(seconds=46)
    deliver(lite)  # one probe goes through, the pause ends, the rest follows
    assert {message(lite, mid)["status"] for mid in ids} == {"sent"}
    r = lite.api.request("GET", f"{BASE}/GRAPH", lite.admin)
    assert r.json()["delivery"]["state"] == "active"


def test_401_refreshes_once_then_needs_reauthorization(lite: Env, api_peers: ApiPeers) -> None:
    add_graph(lite)
    lite.oauth.server.expire_access_tokens()  # Graph refuses the stored token, once
    mid = submit(lite)
    deliver(lite)
    assert message(lite, mid)["status"] == "sent"
    assert len(lite.oauth.server.refresh_requests()) == 1

    # Now Graph refuses even a fresh token: the configuration needs signing in again.
    r = lite.api.request(
        "POST",
        "/api/v1/users",
        lite.admin,
        json={
            "username": "ann",
            "email": "ann@example.com",
            "password": "pw-ann-long-enough-1",
            "roles": {"home": "admin"},
        },
    )
    assert r.status_code == 201, r.text
    graph = api_peers.graph
    graph.refuse_tokens = True
    lite.oauth.server.expire_access_tokens()
    before = len(graph.requests)
    waiting = submit(lite, subject="refused")
    deliver(lite)
    assert len(graph.requests) - before == 2  # the stored token, then one fresh one
    assert len(lite.oauth.server.refresh_requests()) == 2
    assert lite.status("GRAPH")["state"] == "needs_reauthorization"
    view = message(lite, waiting)
    assert view["status"] == "deferred"
    assert "401" in view["last_error"]
    assert [to for to, _s, _t in lite.mailer.sent] == ["ann@example.com"]
    lite.clock.offset += timedelta(hours=1)
    deliver(lite)
    assert len(graph.requests) - before == 2  # waiting mail does not knock on Graph
    assert message(lite, waiting)["status"] == "deferred"
    graph.refuse_tokens = False
    lite.authorize("GRAPH")
    lite.clock.offset += timedelta(minutes=5)
    deliver(lite)
    assert message(lite, waiting)["status"] == "sent"


def test_403_and_404_fail_the_message_with_the_fix(lite: Env, api_peers: ApiPeers) -> None:
    # App-only: the app may send as sender@ only (RBAC for Applications); other@ exists.
    api_peers.graph.mailboxes.add("other@example.com")
    add_graph(lite, "SCOPED", grant="client_credentials", username="other@example.com")
    add_graph(lite, "NOBODY", grant="client_credentials", username="nobody@example.com")
    denied, unknown = submit(lite, "SCOPED"), submit(lite, "NOBODY")
    deliver(lite)
    view = message(lite, denied)
    assert view["status"] == "failed"
    assert "403 ErrorAccessDenied" in view["last_error"]
    assert "Mail.Send" in view["last_error"] and "RBAC for Applications" in view["last_error"]
    view = message(lite, unknown)
    assert view["status"] == "failed"
    assert "404 ErrorInvalidUser" in view["last_error"]
    assert "authentication.username" in view["last_error"]

    result = run_server_test(lite, "SCOPED", to="rcpt@example.org")
    assert [(s["step"], s["ok"]) for s in result["steps"]] == [("token", True), ("send", False)]
    assert "RBAC for Applications" in result["hint"]
    assert "New-ManagementRoleAssignment" in result["hint"]
    result = run_server_test(lite, "NOBODY", to="rcpt@example.org")
    assert "does not know the mailbox" in result["hint"]
    assert "535" not in result["hint"] and "try again later" not in result["hint"].lower()


def test_the_server_test_reports_token_and_send(lite: Env, api_peers: ApiPeers) -> None:
    add_graph(lite, "APP", grant="client_credentials")
    before = len(api_peers.graph.requests)
    dry = run_server_test(lite, "APP", mode="dry_run", to="rcpt@example.org")
    assert dry["ok"] is True
    [token] = dry["steps"]
    assert token["step"] == "token" and token["ok"]
    assert "audience https://graph.microsoft.com" in token["detail"]
    assert "roles Mail.ReadWrite, Mail.Send" in token["detail"]
    assert len(api_peers.graph.requests) == before  # a dry run sends nothing

    sent = run_server_test(lite, "APP", to="rcpt@example.org")
    assert sent["ok"] is True, sent
    assert [s["step"] for s in sent["steps"]] == ["token", "send"]
    assert sent["steps"][1]["detail"].startswith("202 accepted by Microsoft Graph")
    transcript = "\n".join(sent["transcript"])
    assert f"POST {api_peers.graph.base_url}/v1.0/users/{MAILBOX}/sendMail" in transcript
    assert ">   Authorization: Bearer <redacted>" in sent["transcript"]
    assert ">   Content-Type: text/plain" in sent["transcript"]
    assert "< 202 Accepted" in sent["transcript"]
    token_value = lite.tokens("APP")["access_token"]
    assert token_value not in str(sent) and token_value[-20:] not in str(sent)
    [got] = api_peers.graph.delivered
    assert got.message["Subject"] == "mailgate test e-mail: home/APP"

    # Delegated: the token's scopes and the draft permission it lacks for large messages.
    add_graph(lite, "USER")
    dry = run_server_test(lite, "USER", mode="dry_run", to="rcpt@example.org")
    assert f"scopes Mail.Send, for {MAILBOX}" in dry["steps"][0]["detail"]
    assert any("Mail.ReadWrite" in w for w in dry["warnings"])


def test_token_problems_are_named_with_their_fix(lite: Env, api_peers: ApiPeers) -> None:
    # An SMTP token sent to Graph: the token step reads its audience and says so.
    lite.oauth.server.jwt_for_all = True
    add_graph(lite, "SMTPSCOPE", scope="offline_access https://outlook.office.com/SMTP.Send")
    result = run_server_test(lite, "SMTPSCOPE", mode="dry_run", to="rcpt@example.org")
    [token] = result["steps"]
    assert not token["ok"] and "https://outlook.office.com, not Microsoft Graph" in token["detail"]
    assert "authentication.scope empty" in result["hint"]

    # App-only without admin consent: the token has no roles. RBAC for Applications grants
    # are not in tokens, so the token step only warns; Graph's 403 says the rest.
    lite.oauth.server.clients["mailgate-app"].graph_roles = set()
    add_graph(lite, "NOCONSENT", grant="client_credentials")
    result = run_server_test(lite, "NOCONSENT", to="rcpt@example.org")
    assert [(s["step"], s["ok"]) for s in result["steps"]] == [("token", True), ("send", False)]
    assert "roles (none)" in result["steps"][0]["detail"]
    assert any("no application permission Mail.Send" in w for w in result["warnings"])
    assert "admin consent" in result["hint"] and "Application Mail.Send" in result["hint"]

    # Delegated without the Mail.Send scope: the token step fails before anything is sent.
    add_graph(lite, "NOSCOPE", scope="offline_access https://graph.microsoft.com/User.Read")
    result = run_server_test(lite, "NOSCOPE", to="rcpt@example.org")
    assert [(s["step"], s["ok"]) for s in result["steps"]] == [("token", False)]
    assert "no delegated permission (scp) Mail.Send" in result["steps"][0]["detail"]
    assert "Mail.Send is consented" in result["hint"]

    # The token endpoint refuses (AADSTS7000215, a wrong secret): the code's own advice.
    add_graph(lite, "BADSECRET", grant="client_credentials", client_secret="wrong")
    result = run_server_test(lite, "BADSECRET", to="rcpt@example.org")
    assert not result["steps"][0]["ok"] and "AADSTS7000215" in result["steps"][0]["detail"]
    assert "Value" in result["hint"] and "Secret ID" in result["hint"]


def test_a_draft_that_fails_is_deleted_and_made_again(lite: Env, api_peers: ApiPeers) -> None:
    add_graph(lite, grant="client_credentials")
    api_peers.graph.fail_next("/send", 503, retry_after="5")
    data = os.urandom(3 * 1024 * 1024 + 5)  # just over the single-request attachment size
    mid = submit(lite, attachments=[attachment("report.bin", data)])
    deliver(lite)
    view = message(lite, mid)
    assert view["status"] == "deferred", view
    assert len(api_peers.graph.deleted) == 1 and api_peers.graph.drafts == {}
    lite.clock.offset += timedelta(seconds=6)
    deliver(lite)
    assert message(lite, mid)["status"] == "sent"
    [got] = api_peers.graph.delivered
    assert got.attachments == [("report.bin", "application/octet-stream", data)]


def test_an_expired_upload_url_is_no_authorization_problem(lite: Env, api_peers: ApiPeers) -> None:
    graph_scopes = (
        "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite"
    )
    add_graph(lite, scope=f"offline_access {graph_scopes}")
    api_peers.graph.refuse_uploads = True
    mid = submit(lite, attachments=[attachment("big.bin", os.urandom(3 * 1024 * 1024 + 1))])
    deliver(lite)
    view = message(lite, mid)
    assert view["status"] == "deferred" and "upload session" in view["last_error"]
    assert lite.status("GRAPH")["state"] == "authorized"  # the user's token was fine
    assert api_peers.graph.drafts == {}
    api_peers.graph.refuse_uploads = False
    lite.clock.offset += timedelta(minutes=3)
    deliver(lite)
    assert message(lite, mid)["status"] == "sent"


def test_large_messages_need_mail_readwrite(lite: Env, api_peers: ApiPeers) -> None:
    # A delegated grant with Mail.Send alone cannot make drafts: a large message fails with
    # the reason, and nothing is left in the mailbox.
    add_graph(lite)
    mid = submit(lite, attachments=[attachment("big.bin", os.urandom(4 * 1024 * 1024))])
    deliver(lite)
    view = message(lite, mid)
    assert view["status"] == "failed"
    assert "403 ErrorAccessDenied" in view["last_error"] and "Mail.ReadWrite" in view["last_error"]
    assert api_peers.graph.drafts == {} and api_peers.graph.delivered == []


def attachment(name: str, data: bytes) -> dict[str, str]:
    return {
        "filename": name,
        "content_type": "application/octet-stream",
        "content_base64": base64.b64encode(data).decode(),
    }


@pytest.fixture
def real_mailer(
    tmp_path: Path, sqlite_url: str, oauth_server: RunningAuthServer, api_peers: ApiPeers
) -> Iterator[Env]:
    """With the real system mailer (not a recording one)."""
    yield from make_env(
        tmp_path, sqlite_url, oauth_server, record_mail=False, **api_peers.settings()
    )


def test_system_mail_goes_through_graph_too(real_mailer: Env, api_peers: ApiPeers) -> None:
    env = real_mailer
    body = oauth_config("SYSTEM", grant="client_credentials")
    del body["host"], body["port"], body["name"]
    body["transport"] = "microsoft_graph"
    r = env.api.request("PUT", "/api/v1/system/email-server", env.admin, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["transport"] == "microsoft_graph"
    # Password reset links and OAuth2 notices go out through the same transport.
    env.c.system_mailer.send_system_mail("admin@example.org", "system notice", "hello")
    [got] = api_peers.graph.delivered
    assert got.recipients == ["admin@example.org"] and got.message["Subject"] == "system notice"
    r = env.api.request(
        "POST", "/api/v1/system/email-server/test", env.admin, json={"to": "admin@example.org"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["ok"] and [s["step"] for s in r.json()["steps"]] == ["token", "send"]
