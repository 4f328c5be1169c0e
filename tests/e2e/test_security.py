"""The attacks of issue 13, run against a real ``mailgate serve`` process (so they stay
closed): two tenants, an SMTP peer that captures the exact bytes, a dripping token endpoint,
trickling HTTP clients, and the access log as the process writes it.

README "Security model" describes what these check.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tests.conftest import ADMIN_PASSWORD
from tests.drip_server import DripServer
from tests.live_server import serve_process
from tests.smtp_fixtures import SmtpServers

pytestmark = pytest.mark.slow

CRLF_WORD = "=?utf-8?q?hi=0D=0AX-Injected:_1?="
BODY_WORD = "=?utf-8?b?aGkNCg0KcmVwbGFjZWQgYm9keQ==?="  # "hi\r\n\r\nreplaced body"
TOKEN_DEADLINE_S = 1.5
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
PASSWORD = "Peer-pw-123"


@dataclass
class Served:
    url: str
    log: list[str]
    proc: subprocess.Popen[str]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def login(self, username: str, password: str) -> str:
        with self.client() as c:
            r = c.post("/api/v1/auth/login", json={"username": username, "password": password})
            assert r.status_code == 200, r.text
            token: str = r.json()["token"]
            return token

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("mailgate-security")
    env = {
        **os.environ,
        "MAILGATE_DATA_DIR": str(data),
        "MAILGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MAILGATE_LOG_LEVEL": "INFO",
        "MAILGATE_SMTP_LISTEN": "127.0.0.1:0",
        "MAILGATE_WORKERS": "1",
        "MAILGATE_WORKER_POLL_S": "0.2",
        "MAILGATE_OAUTH_TIMEOUT_S": str(TOKEN_DEADLINE_S),
        "MAILGATE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "MAILGATE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "MAILGATE_PASSWORD_HASH_TIME_COST": "1",
        "MAILGATE_PASSWORD_HASH_MEMORY_KIB": "1024",
    }
    env.pop("MAILGATE_DATABASE_URL", None)
    with serve_process(["--port", "0"], env, data) as (url, log, proc):
        yield Served(url, log, proc)


@pytest.fixture(scope="module")
def admin(served: Served) -> str:
    return served.login("admin", ADMIN_PASSWORD)


def _tenant(served: Served, admin: str, name: str) -> None:
    with served.client(admin) as c:
        r = c.post("/api/v1/tenants", json={"name": name})
        assert r.status_code in (201, 409), r.text


def _server(served: Served, admin: str, tenant: str, body: dict[str, Any]) -> None:
    with served.client(admin) as c:
        c.delete(f"/api/v1/tenants/{tenant}/email-servers/{body['name']}")
        r = c.post(f"/api/v1/tenants/{tenant}/email-servers", json=body)
        assert r.status_code == 201, r.text


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_header_injection_is_refused_and_the_peer_gets_clean_bytes(
    served: Served, admin: str, smtp_servers: SmtpServers
) -> None:
    peer = smtp_servers.start()
    _tenant(served, admin, "inj")
    _server(served, admin, "inj", peer.config("MAIN"))
    base = "/api/v1/tenants/inj/messages"
    with served.client(admin) as c:
        for body, field in (
            ({"subject": CRLF_WORD}, "subject"),
            ({"headers": {"X-Note": BODY_WORD}}, "headers.X-Note"),
            ({"to": [{"address": "a@example.net", "name": CRLF_WORD}]}, "to.0"),
        ):
            r = c.post(base, json={"to": ["a@example.net"], "text": "x", **body})
            assert r.status_code == 422, r.text
            assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.text
        raw = b"From: s@example.com\r\nTo: a@example.net\r\nSubject: " + CRLF_WORD.encode()
        r = c.post(
            base, content=raw + b"\r\n\r\nbody\r\n", headers={"content-type": "message/rfc822"}
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Subject"
        r = c.patch(
            "/api/v1/tenants/inj/email-servers/MAIN",
            json={"message_defaults": {"from_name": BODY_WORD}},
        )
        assert r.status_code == 422, r.text
        # What is accepted arrives as one header line each, byte for byte.
        r = c.post(
            base,
            json={"to": ["a@example.net"], "subject": "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "text": "ok"},
        )
        assert r.status_code == 202, r.text
    [received] = peer.wait_for(1, timeout=20)
    head = received.content.split(b"\r\n\r\n", 1)[0]
    assert b"X-Injected" not in received.content and b"replaced body" not in received.content
    assert [line for line in head.split(b"\r\n") if line.startswith(b"Subject:")] == [
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?="
    ]


def test_a_dripping_token_endpoint_costs_only_its_tenant(served: Served, admin: str) -> None:
    _tenant(served, admin, "slow")
    _tenant(served, admin, "fast")
    with DripServer(interval_s=0.2, max_s=30) as drip:
        auth = {
            "method": "oauth2",
            "provider": "custom",
            "grant": "client_credentials",
            "username": "sender@slow.example",
            "client_id": "app",
            "client_secret": "slow-secret",
            "authorize_url": drip.url + "/authorize",
            "token_url": drip.url + "/token",
            "scope": "smtp",
        }
        _server(
            served,
            admin,
            "slow",
            {"name": "SLOW", "host": "smtp.slow.example", "authentication": auth},
        )
        fast = {
            "name": "FAST",
            "host": "smtp.fast.example",
            "message_defaults": {"from_address": "a@fast.example"},
        }
        _server(served, admin, "fast", fast)
        result: dict[str, Any] = {}

        def refresh() -> None:
            started = time.monotonic()
            with served.client(admin) as c:
                result["r"] = c.post("/api/v1/tenants/slow/email-servers/SLOW/oauth2/refresh")
            result["s"] = time.monotonic() - started

        thread = threading.Thread(target=refresh, daemon=True)
        thread.start()
        assert drip.connected.wait(10)
        took = []
        with served.client(admin) as c:
            for _ in range(5):
                started = time.monotonic()
                r = c.post(
                    "/api/v1/tenants/fast/messages",
                    json={"to": ["x@example.net"], "text": "x", "hold": True},
                )
                took.append(time.monotonic() - started)
                assert r.status_code == 202, r.text
            started = time.monotonic()
            assert served.login("admin", ADMIN_PASSWORD)
            took.append(time.monotonic() - started)
        thread.join(TOKEN_DEADLINE_S + 10)
        assert max(took) < 0.5, took
        assert result["s"] < TOKEN_DEADLINE_S + 2, result
        assert result["r"].status_code == 503, result["r"].text
        assert "slow-secret" not in result["r"].text


def test_outbound_policy_and_secret_binding(
    served: Served, admin: str, smtp_servers: SmtpServers
) -> None:
    peer = smtp_servers.start(tls="starttls", users={"alice": PASSWORD})
    scanner_target = smtp_servers.start(tls="starttls", users={"alice": PASSWORD})
    _tenant(served, admin, "pol")
    _server(served, admin, "pol", peer.password_config("alice", PASSWORD, name="MAIN"))
    test_url = "/api/v1/tenants/pol/email-servers/MAIN/test"
    with served.client(admin) as c:
        r = c.put(
            "/api/v1/system/settings",
            json={"outbound_policy": {"deny_networks": ["169.254.0.0/16", "127.0.0.0/8"]}},
        )
        assert r.status_code == 200, r.text
        try:
            result = c.post(test_url, json={"to": "x@example.org"}).json()
        finally:
            c.put(
                "/api/v1/system/settings",
                json={"outbound_policy": {"deny_networks": ["169.254.0.0/16", "fe80::/10"]}},
            )
        failed = [s for s in result["steps"] if not s["ok"]]
        assert failed[0]["step"] == "connect" and "outbound policy" in failed[0]["detail"]
        assert peer.commands == []
        # Re-pointed at another server without the password: it is not sent there.
        r = c.patch("/api/v1/tenants/pol/email-servers/MAIN", json={"port": scanner_target.port})
        assert r.status_code == 200 and r.json()["authentication"]["password_set"] is False
        result = c.post(test_url, json={"to": "x@example.org"}).json()
        assert result["ok"] is False and scanner_target.auth_attempts == []
        assert PASSWORD not in str(result)


def test_web_service_users_see_only_their_own_messages(served: Served, admin: str) -> None:
    _tenant(served, admin, "own")
    _server(
        served,
        admin,
        "own",
        {
            "name": "MAIN",
            "host": "smtp.own.example",
            "message_defaults": {"from_address": "a@own.example"},
        },
    )
    tokens = {}
    with served.client(admin) as c:
        for name in ("wsa", "wsb"):
            r = c.post(
                "/api/v1/users",
                json={
                    "username": name,
                    "password": f"pw-{name}-12345",
                    "roles": {"own": "web_service"},
                },
            )
            assert r.status_code == 201, r.text
            tokens[name] = served.login(name, f"pw-{name}-12345")
    ids = {}
    for name, token in tokens.items():
        with served.client(token) as c:
            r = c.post(
                "/api/v1/tenants/own/messages",
                json={"to": ["x@example.net"], "text": "x", "hold": True},
            )
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
    with served.client(tokens["wsa"]) as c:
        assert [m["id"] for m in c.get("/api/v1/tenants/own/messages").json()["items"]] == [
            ids["wsa"]
        ]
        assert c.get(f"/api/v1/tenants/own/messages/{ids['wsb']}").status_code == 404


def test_the_access_log_holds_no_reset_token_or_authorization_code(served: Served) -> None:
    with served.client() as c:
        c.get("/ui/reset-password?token=mgr_RESETSECRET123")
        c.get("/settings/oauth2code?code=CODESECRET456&state=STATESECRET789")
    _wait(
        lambda: any("/settings/oauth2code" in line for line in served.log), 5, "the access log line"
    )
    text = "".join(served.log)
    assert "/ui/reset-password?token=<redacted>" in text
    for secret in ("RESETSECRET123", "CODESECRET456", "STATESECRET789"):
        assert secret not in text


def test_every_answer_says_nosniff_and_send_at_out_of_range_is_a_422(
    served: Served, admin: str
) -> None:
    with served.client(admin) as c:
        for path in ("/healthz", "/api/v1/auth/me", "/ui/login", "/nope", "/openapi.json"):
            assert c.get(path).headers.get("x-content-type-options") == "nosniff", path
        _tenant(served, admin, "sched")
        _server(
            served,
            admin,
            "sched",
            {
                "name": "MAIN",
                "host": "smtp.s.example",
                "message_defaults": {"from_address": "a@s.example"},
            },
        )
        for send_at in ("9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+01:00"):
            for key in (None, "k-" + send_at[:4]):
                body = {
                    "to": ["x@example.net"],
                    "text": "x",
                    "send_at": send_at,
                    "idempotency_key": key,
                }
                r = c.post("/api/v1/tenants/sched/messages", json=body)
                assert r.status_code == 422 and r.json()["errors"][0]["field"] == "send_at", r.text
            r = c.post(
                f"/api/v1/tenants/sched/messages?send_at={send_at.replace('+', '%2B')}",
                content=b"From: a@s.example\r\nTo: x@example.net\r\n\r\nx\r\n",
                headers={"content-type": "message/rfc822"},
            )
            assert r.status_code == 422, r.text


def test_trickling_clients_are_cut_off(served: Served) -> None:
    host, port = served.host_port
    # Headers a byte at a time: the connection is closed after the header deadline.
    sock = socket.create_connection((host, port))
    sock.settimeout(0.2)
    started = time.monotonic()
    closed = False
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(1024) == b"":
                closed = True
                break
        except TimeoutError:
            pass
        except OSError:
            closed = True
            break
        if time.monotonic() - started > HEADER_TIMEOUT_S + 5:
            break
    sock.close()
    assert closed and time.monotonic() - started < HEADER_TIMEOUT_S + 3
    # A body that never completes: 408 after the body deadline.
    sock = socket.create_connection((host, port))
    sock.sendall(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    sock.settimeout(BODY_TIMEOUT_S + 5)
    started = time.monotonic()
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < BODY_TIMEOUT_S + 3
