"""A database that cannot write, seen from outside a real ``mailgate serve`` (issue 14):
submissions answer 503 problem+json with ``Retry-After``, the keep-alive connection stays
usable, the log says why once, ``/healthz`` says the write path fails, ``/metrics`` counts the
failed writes; when writes work again, so does everything else.

The failure is real: on SQLite serve's file size limit (RLIMIT_FSIZE, set from outside with
prlimit) is lowered to the database files' current size, so the next write fails as on a
full disk (EFBIG); on PostgreSQL the database is switched to read-only and serve's
connections are terminated (the reconnected ones are read-only)."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tests.e2e.test_serve_workers import Serve, serve, wait_until
from tests.smtp_fixtures import SmtpServers

pytestmark = pytest.mark.slow


def _local_port(r: httpx.Response) -> int:
    port: int = r.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


@contextmanager
def _sqlite_full(s: Serve, data_dir: Path) -> Iterator[None]:
    # Every write that extends a file now fails (EFBIG, as ENOSPC would): SQLite may reuse
    # the WAL from its start, so the limit is no size at all. serve's output goes through a
    # pipe (``serve(..., piped=True)``), which the limit does not touch.
    limit = 0
    _soft, hard = resource.prlimit(s.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(s.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.prlimit(s.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))


@contextmanager
def _postgres_read_only(database_url: str) -> Iterator[None]:
    name = make_url(database_url).database
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")

    def switch(read_only: bool) -> None:
        with admin.connect() as conn:
            conn.execute(
                text(
                    f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                    + ("on" if read_only else "off")
                )
            )
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )

    switch(True)
    try:
        yield
    finally:
        switch(False)
        admin.dispose()


def test_a_database_that_cannot_write_answers_503_and_keeps_the_connection(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with serve(tmp_path, database_url, workers=0, piped=True) as s:
        http = s.http
        r = http.post("/api/v1/tenants/home/email-servers", json=server.config())
        assert r.status_code == 201, r.text
        message = {"to": ["a@example.org"], "subject": "s", "text": "t"}
        assert http.post("/api/v1/tenants/home/messages", json=message).status_code == 202
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["write"]["last_commit"] == "ok"
        if database_url.startswith("sqlite"):
            assert health["write"]["free_bytes"] > 0

        if database_url.startswith("sqlite"):
            broken = _sqlite_full(s, tmp_path / "data")
        else:
            broken = _postgres_read_only(database_url)
        with broken:
            ports = set()
            for _ in range(5):
                r = http.post("/api/v1/tenants/home/messages", json=message)
                assert r.status_code == 503, r.text
                assert r.headers["content-type"] == "application/problem+json"
                assert int(r.headers["retry-after"]) > 0
                assert r.json()["title"] == "Database unavailable"
                ports.add(_local_port(r))
            # The same connection answers the next request, and reads still work.
            r = http.get("/api/v1/tenants/home/email-servers")
            assert r.status_code == 200, r.text
            ports.add(_local_port(r))
            assert len(ports) == 1, ports
            r = http.get("/healthz")
            assert r.status_code == 503, r.text
            health = r.json()
            assert health["status"] == "error" and health["write"]["last_commit"] == "failed"
            assert health["write"]["error"] and health["write"]["failed_commits"] >= 5
            metrics = http.get("/metrics").text
            failures = [
                line
                for line in metrics.splitlines()
                if line.startswith("mailgate_database_write_failures_total ")
            ]
            assert failures and float(failures[0].split()[1]) >= 5

        # Writes work again: submissions, /healthz; the log told the story once each way.
        r = wait_until(
            lambda: (
                (r := http.post("/api/v1/tenants/home/messages", json=message)).status_code == 202
                and r
            ),
            20,
            "submissions to work again",
        )
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["write"]["last_commit"] == "ok"
        # (serve's output reaches the file through a pipe: wait for it.)
        wait_until(lambda: "database writes work again" in s.text(), 10, "the log")
        log = s.text()
        assert log.count("database writes fail:") == 1, log
        assert log.count("database writes work again") == 1, log
        assert " 500 " not in log and "Traceback" not in log, log
