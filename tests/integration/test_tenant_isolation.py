"""One tenant's failure mode costs that tenant only (issue 13, point 1): no HTTP call and no
password hashing inside a database transaction, and a total deadline on every token request.

A real dripping HTTP endpoint (``tests/drip_server.py``) plays a tenant's token endpoint.
While mailgate waits for it, the database's write lock must be free (checked from another
connection: SQLite ``BEGIN IMMEDIATE`` without waiting, PostgreSQL no session idle in a
transaction) and another tenant's submission must be fast.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from tests.conftest import ADMIN_PASSWORD, Api, make_settings, password_server
from tests.drip_server import DripServer, JsonEndpoint
from tests.oauth_server import query_of
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db.tables import EmailServer
from mailgate.bootstrap import Container, build, first_start
from mailgate.domain.oauth2 import TokenEndpointDown
from mailgate.entrypoints.api.app import create_app
from mailgate.entrypoints.worker import Worker

DEADLINE_S = 1.0
ACME = "/api/v1/tenants/acme/email-servers"


def write_lock_free(c: Container) -> bool:
    """Whether no transaction of mailgate's is open right now (seen from outside)."""
    url = c.engine.url
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    probe = create_engine(url.render_as_string(hide_password=False))
    try:
        with probe.connect() as conn:
            busy = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
                )
            )
        return busy == 0
    finally:
        probe.dispose()


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    c = build(make_settings(tmp_path, database_url, oauth_timeout_s=DEADLINE_S))
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        yield Api(client, c)
    c.engine.dispose()


@pytest.fixture
def drip() -> Iterator[DripServer]:
    with DripServer(interval_s=0.2, max_s=15) as server:
        yield server


def _slow_tenant(api: Api, admin: str, drip: DripServer, grant: str) -> None:
    api.make_tenant(admin, "acme")
    auth = {
        "method": "oauth2",
        "provider": "custom",
        "grant": grant,
        "username": "sender@acme.example",
        "client_id": "acme-app",
        "client_secret": "acme-secret",
        "authorize_url": drip.url + "/authorize",
        "token_url": drip.url + "/token",
        "scope": "smtp",
    }
    body = {"name": "SLOW", "host": "smtp.acme.example", "authentication": auth}
    r = api.request("POST", ACME, admin, json=body)
    assert r.status_code == 201, r.text
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    assert r.status_code == 201, r.text


def _other_tenant_stays_fast(api: Api, admin: str) -> None:
    started = time.monotonic()
    r = api.request(
        "POST", "/api/v1/tenants/home/messages", admin, json={"to": ["a@example.net"], "text": "x"}
    )
    took = time.monotonic() - started
    assert r.status_code == 202, r.text
    assert took < 0.5, f"another tenant's submission took {took:.2f} s"


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            out["result"] = fn()
        except Exception as exc:
            out["error"] = exc
        out["s"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_dripping_token_endpoint_is_cut_off_and_holds_no_lock(api: Api, drip: DripServer) -> None:
    admin = api.admin_token()
    _slow_tenant(api, admin, drip, "client_credentials")
    server_id = _row(api, "SLOW").id
    thread, out = _in_thread(lambda: api.container.oauth2.tokens.refresh_now(server_id))
    assert drip.connected.wait(5)
    assert write_lock_free(api.container), "a transaction is open during the token request"
    _other_tenant_stays_fast(api, admin)
    thread.join(DEADLINE_S + 5)
    assert isinstance(out.get("error"), TokenEndpointDown), out
    assert out["s"] < DEADLINE_S + 1.5, f"the token request took {out['s']:.1f} s"
    status = api.request("GET", f"{ACME}/SLOW", admin).json()["oauth2_status"]
    assert "deadline" in (status["last_error"] or ""), status
    # The claim is gone with the answer: the next refresh asks again, it does not wait.
    assert "refresh_claim" not in str(api.container.servers.tokens_of(_row(api, "SLOW")))


def _row(api: Api, name: str) -> EmailServer:
    with api.container.session() as db:
        row = db.scalar(select(EmailServer).where(EmailServer.name == name))
        assert row is not None
        return row


def test_oauth2_callback_exchanges_the_code_outside_a_transaction(
    api: Api, drip: DripServer
) -> None:
    admin = api.admin_token()
    _slow_tenant(api, admin, drip, "authorization_code")
    r = api.request("POST", f"{ACME}/SLOW/oauth2/authorize", admin)
    assert r.status_code == 200, r.text
    state = query_of(r.json()["authorization_url"])["state"]
    thread, out = _in_thread(
        lambda: api.client.get(
            f"/settings/oauth2code?code=c0de&state={state}", follow_redirects=False
        )
    )
    assert drip.connected.wait(5)
    assert write_lock_free(api.container), "a transaction is open during the code exchange"
    _other_tenant_stays_fast(api, admin)
    thread.join(DEADLINE_S + 5)
    assert out["s"] < DEADLINE_S + 1.5, f"the callback took {out['s']:.1f} s"
    response = out["result"]
    assert response.status_code == 303
    outcome = query_of(response.headers["location"])
    assert outcome["oauth2"] == "error" and "deadline" in outcome["message"], outcome
    # The state was spent in the first transaction: a replay is refused.
    again = api.client.get(f"/settings/oauth2code?code=c0de&state={state}")
    assert again.status_code == 400


class LockCheckingHasher(PasswordHasher):
    """Argon2id (real), noting whether a transaction was open at each hash or verify."""

    def __init__(self, c: Container) -> None:
        super().__init__(time_cost=1, memory_cost=64)
        self.c = c
        self.lock_free: list[bool] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.lock_free.append(write_lock_free(self.c))
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.lock_free.append(write_lock_free(self.c))
        return super().verify(hash, password)


def test_passwords_are_hashed_outside_transactions(api: Api) -> None:
    hasher = LockCheckingHasher(api.container)
    api.container.identity.hasher = hasher
    admin = api.admin_token()
    r = api.client.post("/api/v1/auth/login", json={"username": "admin", "password": "wrong-1"})
    assert r.status_code == 401
    api.make_user(admin, "ann", {"home": "user"})  # creates (hash) and signs in (verify)
    r = api.request("PATCH", "/api/v1/users/ann", admin, json={"password": "another-pw-42"})
    assert r.status_code == 200, r.text
    assert api.login("admin", ADMIN_PASSWORD)
    assert len(hasher.lock_free) >= 5
    assert all(hasher.lock_free), hasher.lock_free


def _authorized_custom(api: Api, admin: str, name: str, token_url: str) -> None:
    auth = {
        "method": "oauth2",
        "provider": "custom",
        "grant": "authorization_code",
        "username": "sender@example.com",
        "client_id": "app",
        "client_secret": "app-secret",
        "authorize_url": "https://idp.example.com/authorize",
        "token_url": token_url,
        "scope": "smtp",
    }
    body = {"name": name, "host": "smtp.example.com", "authentication": auth}
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=body)
    assert r.status_code == 201, r.text
    with api.container.session() as db:
        row = db.scalar(select(EmailServer).where(EmailServer.name == name))
        assert row is not None
        api.container.servers.store_tokens(row, {"access_token": "old", "refresh_token": "rt"})
        row.oauth2_state = "authorized"


def test_one_configurations_token_answer_never_stops_the_keeper_for_the_others(api: Api) -> None:
    """Token answers that raised OverflowError (expires_in 1e30; Infinity, which Python's
    JSON reader accepts) once ended every keeper round for all tenants."""
    admin = api.admin_token()
    huge = JsonEndpoint(
        '{"access_token": "huge", "expires_in": 1e30, '
        '"client_secret_expires_at": 1e30, "refresh_token": "rt2"}'
    )
    infinite = JsonEndpoint('{"access_token": "inf", "expires_in": Infinity}')
    good = JsonEndpoint('{"access_token": "fresh", "expires_in": 3600, "refresh_token": "rt3"}')
    try:
        _authorized_custom(api, admin, "A-HUGE", huge.url + "/token")
        _authorized_custom(api, admin, "B-INFINITE", infinite.url + "/token")
        _authorized_custom(api, admin, "C-GOOD", good.url + "/token")
        refreshed = api.container.oauth2.keeper.run_once()
        assert huge.requests == infinite.requests == good.requests == 1
        assert refreshed == 2
        tokens = {n: api.container.servers.tokens_of(_row(api, n)) for n in ("A-HUGE", "C-GOOD")}
        assert tokens["C-GOOD"]["access_token"] == "fresh"
        assert tokens["A-HUGE"]["access_token"] == "huge"  # clamped to a year, kept
        status = api.request("GET", "/api/v1/tenants/home/email-servers/B-INFINITE", admin).json()[
            "oauth2_status"
        ]
        assert status["last_error"] and "answer" in status["last_error"], status
    finally:
        for endpoint in (huge, infinite, good):
            endpoint.close()


def test_a_dripping_token_endpoint_does_not_starve_the_worker(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    """The worker's database calls run on the event loop's executor: a tenant whose token
    requests hang there, one thread per connection it tries, held up every tenant's mail."""
    # At the end the worker stops after a 0.5 s drain, not after the token requests' 6 s.
    c = build(
        make_settings(
            tmp_path, sqlite_url, oauth_timeout_s=6, worker_poll_s=0.1, shutdown_drain_s=0.5
        )
    )
    first_start(c, echo=lambda _m: None)
    peer = smtp_servers.start()
    # The slow tenant's SMTP server wants XOAUTH2: each connection asks for a token.
    xoauth2 = smtp_servers.start(xoauth2=lambda _user, _token: False, auth_require_tls=False)
    with DripServer(interval_s=0.2, max_s=10) as drip, TestClient(create_app(c)) as client:
        api = Api(client, c)
        admin = api.admin_token()
        _slow_tenant(api, admin, drip, "client_credentials")
        change = {
            "host": xoauth2.host,
            "port": xoauth2.port,
            "starttls": "disabled",
            "limits": {"max_connections": 20},
            "authentication": {"client_secret": "acme-secret"},
        }
        r = api.request("PATCH", f"{ACME}/SLOW", admin, json=change)
        assert r.status_code == 200, r.text
        r = api.request(
            "POST", "/api/v1/tenants/home/email-servers", admin, json=peer.config("PEER")
        )
        assert r.status_code == 201, r.text
        for _ in range(20):
            r = api.request(
                "POST",
                "/api/v1/tenants/acme/messages",
                admin,
                json={"to": ["x@example.net"], "from": "a@acme.example", "text": "x"},
            )
            assert r.status_code == 202, r.text

        def submit_other_tenants_mail() -> None:
            for _ in range(5):
                r = api.request(
                    "POST",
                    "/api/v1/tenants/home/messages",
                    admin,
                    json={"server": "PEER", "to": ["y@example.net"], "text": "y"},
                )
                assert r.status_code == 202, r.text

        async def deliver() -> float:
            stop = asyncio.Event()
            worker = asyncio.create_task(Worker(c, worker_id="isolation").run(stop))
            loop = asyncio.get_running_loop()
            own = ThreadPoolExecutor(1)  # not the loop's executor: the subject of the test
            started = loop.time()
            while drip.connections == 0 and loop.time() - started < 10:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # the slow tenant's connections pile up on its token
            await loop.run_in_executor(own, submit_other_tenants_mail)
            started = loop.time()
            while peer.count < 5 and loop.time() - started < 10:
                await asyncio.sleep(0.05)
            took = loop.time() - started
            stop.set()
            await asyncio.wait_for(worker, 30)
            own.shutdown()
            return took

        took = asyncio.run(deliver())
        assert drip.connections >= 1
        assert peer.count == 5, f"{peer.count} of the other tenant's 5 messages in {took:.1f} s"
        assert took < 3, f"the other tenant's mail took {took:.1f} s"
    c.engine.dispose()
