"""Shared fixtures: a mailgate container on SQLite and on PostgreSQL, an API client, users.

PostgreSQL tests run when ``MAILGATE_TEST_DATABASE_URL`` is set; with ``CI=true`` a missing
URL is a failure, not a skip. Each test session gets its own PostgreSQL database (so parallel
runs on one server do not collide), migrated once and truncated between tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tests.api_peers import _api_peers_running, api_peers  # noqa: F401 (fixtures)
from tests.oauth_server import RunningAuthServer, start_auth_server
from tests.smtp_fixtures import LoopThread, Pki, SmtpServers

from mailgate.adapters.db.engine import make_engine, migrate
from mailgate.adapters.db.tables import Base
from mailgate.adapters.secrets import generate_key
from mailgate.bootstrap import Container, build, first_start
from mailgate.config import Settings
from mailgate.entrypoints.api.app import create_app

ADMIN_PASSWORD = "admin-test-password"
IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("MAILGATE_TEST_DATABASE_URL")


def require_postgres() -> str:
    if not PG_URL:
        if IN_CI:
            pytest.fail("CI=true but MAILGATE_TEST_DATABASE_URL is not set")
        pytest.skip("PostgreSQL tests need MAILGATE_TEST_DATABASE_URL")
    return PG_URL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "mailgate.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection to close checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    base = require_postgres()
    name = f"mailgate_t_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def truncate_all(url: str) -> None:
    """Empty every table and restart every sequence, as ``TRUNCATE ... RESTART IDENTITY``
    would. DELETE in one transaction: a test leaves a few rows, and TRUNCATE of two dozen
    tables (new files for each) took 0.1-0.3 s per test, DELETE 0.02 s."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):  # children before parents
            conn.execute(text(f'DELETE FROM "{table.name}"'))
        used = conn.scalars(
            text(
                "SELECT sequencename FROM pg_sequences"
                " WHERE schemaname = current_schema() AND last_value IS NOT NULL"
            )
        )
        for sequence in list(used):
            conn.execute(text(f'ALTER SEQUENCE "{sequence}" RESTART'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """Every test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        target = tmp_path / "data" / "mailgate.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sqlite_template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("postgres_database")
    truncate_all(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """For tests whose subject does not depend on the database engine."""
    target = tmp_path / "data" / "mailgate.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "secret_key": generate_key(),
        "admin_password": ADMIN_PASSWORD,
        "public_base_url": "http://testserver",
        "workers": 0,
        "login_max_failures": 5,
        # Real Argon2id at its cheapest: hashing cost is not what these tests are about.
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 64,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def container(tmp_path: Path, database_url: str) -> Iterator[Container]:
    c = build(make_settings(tmp_path, database_url))
    first_start(c, echo=lambda _m: None)
    yield c
    c.engine.dispose()


@dataclass
class Api:
    """A thin test client: ``api.as_(token).get(...)``, with login helpers."""

    client: TestClient
    container: Container

    def login(self, username: str, password: str) -> str:
        r = self.client.post(
            "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def admin_token(self) -> str:
        return self.login("admin", ADMIN_PASSWORD)

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, url: str, token: str | None = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}) or {})
        if token:
            headers.update(self.auth(token))
        return self.client.request(method, url, headers=headers, **kw)

    def make_user(
        self, admin: str, username: str, roles: dict[str, str], system_admin: bool = False
    ) -> str:
        password = f"pw-{username}-{uuid.uuid4().hex[:8]}"
        r = self.request(
            "POST",
            "/api/v1/users",
            admin,
            json={
                "username": username,
                "password": password,
                "roles": roles,
                "system_admin": system_admin,
            },
        )
        assert r.status_code == 201, r.text
        return self.login(username, password)

    def make_tenant(self, admin: str, name: str) -> None:
        r = self.request("POST", "/api/v1/tenants", admin, json={"name": name})
        assert r.status_code == 201, r.text

    def make_api_key(self, admin: str, tenant: str, role: str = "web_service") -> str:
        r = self.request(
            "POST",
            f"/api/v1/tenants/{tenant}/api-keys",
            admin,
            json={"name": f"k-{role}", "role": role},
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token


@pytest.fixture
def api(container: Container) -> Iterator[Api]:
    with TestClient(create_app(container)) as client:
        yield Api(client, container)


def password_server(name: str = "DEFAULT", **overrides: Any) -> dict[str, Any]:
    """A valid configuration body with a password, for CRUD tests."""
    body: dict[str, Any] = {
        "name": name,
        "protocol": "smtp",
        "host": "smtp.example.com",
        "port": 587,
        "starttls": "required",
        "authentication": {
            "method": "password",
            "username": "sender@example.com",
            "password": "S3cret-pw!",
        },
        "message_defaults": {"from_address": "noreply@example.com", "from_name": "Example"},
    }
    body.update(overrides)
    return body


# ---- SMTP servers (tests/smtp_fixtures.py) ------------------------------------------------


@pytest.fixture(scope="session")
def smtp_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="session")
def smtp_pki() -> Pki:
    return Pki.create()


@pytest.fixture
def smtp_servers(smtp_loop: LoopThread, smtp_pki: Pki) -> Iterator[SmtpServers]:
    """Start real aiosmtpd servers with ``smtp_servers.start(...)``; stopped after the test."""
    servers = SmtpServers(smtp_loop, smtp_pki)
    yield servers
    servers.close()


# ---- OAuth2: a local authorization server (tests/oauth_server.py) ----------------------------


@pytest.fixture(scope="session")
def _oauth_server_running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningAuthServer]:
    yield from start_auth_server(tmp_path_factory.mktemp("oauth"))


@pytest.fixture
def oauth_server(_oauth_server_running: RunningAuthServer) -> RunningAuthServer:
    """The session's local OAuth2 server, reset to a clean state for this test."""
    _oauth_server_running.server.reset()
    return _oauth_server_running
