"""/healthz reports the write path (issue 14 point 4); the failing case with a database
that refuses writes is in tests/e2e/test_database_failures.py."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from tests.conftest import Api

from mailgate.adapters.db import health as db_health
from mailgate.adapters.db.tables import Process
from mailgate.entrypoints.api.routers import health


def test_an_idle_process_proves_its_write_path_with_a_heartbeat(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if this process had written nothing for PROBE_AFTER_S (it just signed in).
    monkeypatch.setattr(db_health, "PROBE_AFTER_S", 0.0)
    r = api.client.get("/healthz")
    assert r.status_code == 200, r.text
    write = r.json()["write"]
    assert write["last_commit"] == "ok" and write["failed_commits"] == 0
    assert write["last_commit_age_s"] < 5
    with api.container.sessions() as db:
        kinds = list(db.scalars(select(Process.kind)))
    assert kinds == ["api"]
    if api.container.engine.dialect.name == "sqlite":
        assert write["free_bytes"] > 0
    else:
        assert write["free_bytes"] is None


# Free space is a SQLite matter (PostgreSQL's disk is the server's): no PostgreSQL variant,
# which would only skip (and a skip fails the run under CI=true).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_nearly_full_data_directory_answers_503(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = api.client.get("/healthz").json()["write"]["free_bytes"]
    monkeypatch.setattr(health, "MIN_FREE_BYTES", free * 2)
    r = api.client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "error"
