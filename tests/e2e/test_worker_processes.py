"""``mailgate worker`` processes: crash safety (SIGKILL mid-batch) and many workers on
PostgreSQL. The SMTP server runs in this process; the workers are real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from tests.conftest import make_settings, truncate_all
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.db.tables import Message, MessageAttempt, MessageContent, Tenant
from mailgate.bootstrap import Container, build, first_start
from mailgate.domain.messages import new_message_id
from mailgate.schemas.email_server import EmailServerIn
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox import Owner, SubmitOptions


def queue_messages(c: Container, server: SmtpServer, n: int, max_connections: int) -> None:
    """Queue ``n`` messages through the outbox, numbered by an X-Seq header.

    The first goes through ``Submitter.submit``; the rest copy its rows with another X-Seq, in
    one bulk insert (building n MIME messages one by one is not what these tests are about).
    """
    with c.session() as db:
        tenant = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert tenant is not None
        c.servers.create(
            db,
            tenant,
            EmailServerIn.model_validate(
                server.config(
                    limits={"max_connections": max_connections},
                    # Generous: on a loaded machine a 5 s reply timeout after DATA makes a
                    # delivered message look deferred, and its retry a true duplicate.
                    timeouts={"connect_s": 30, "command_s": 120},
                )
            ),
        )
        body = MessageIn.model_validate(
            {"to": ["r@example.org"], "text": "x" * 500, "headers": {"X-Seq": "0"}}
        )
        first = c.outbox.submitter.submit(
            db, tenant.id, Owner("test", None), body, SubmitOptions.of(body)
        ).message
        raw = db.get(MessageContent, first.id)
        assert raw is not None
        template = {
            c.key: getattr(first, c.key) for c in Message.__table__.columns if c.key != "id"
        }
        rows, contents = [], []
        for i in range(1, n):
            mid = new_message_id()
            rows.append({**template, "id": mid})
            contents.append(
                {
                    "message_id": mid,
                    "raw": raw.raw.replace(b"X-Seq: 0\r\n", f"X-Seq: {i}\r\n".encode()),
                }
            )
        if rows:
            db.execute(insert(Message), rows)
            db.execute(insert(MessageContent), contents)


def start_worker(
    c: Container,
    tmp_path: Path,
    name: str,
    poll_s: float = 0.5,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    s = c.settings
    env = {
        **os.environ,
        "MAILGATE_DATABASE_URL": s.effective_database_url,
        "MAILGATE_SECRET_KEY": s.secret_key or "",
        "MAILGATE_DATA_DIR": str(s.data_dir),
        "MAILGATE_LEASE_S": "5",
        "MAILGATE_WORKER_BATCH": "100",
        "MAILGATE_WORKER_POLL_S": str(poll_s),
        "MAILGATE_LOG_LEVEL": "WARNING",
        # A message a killed worker had started is retried after 1 s, not an hour.
        "MAILGATE_POSSIBLY_DELIVERED_RETRY_S": "1",
        **(extra_env or {}),
    }
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "mailgate.entrypoints.cli", "worker", "--stats-every", "0"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sent_count(c: Container) -> int:
    with c.sessions() as db:
        return db.scalar(select(func.count()).where(Message.status == "sent")) or 0


def received_seqs(server: SmtpServer) -> Counter[str]:
    return Counter(str(m.message["X-Seq"]) for m in server.received)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=20)


def test_a_worker_process_on_sqlite_wakes_when_mail_arrives(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    """SQLite has no NOTIFY: the API process signals the worker process through a Unix
    datagram socket. The worker polls only every 60 s here, so a delivery within seconds
    means it was woken."""
    server = smtp_servers.start()
    c = build(make_settings(tmp_path, sqlite_url))
    first_start(c, echo=lambda _m: None)
    assert c.wakeup.local is not None
    queue_messages(c, server, 1, max_connections=1)
    worker = start_worker(c, tmp_path, "idle", poll_s=60)
    try:
        wait_until(lambda: server.count == 1, 30, "the queued message")
        wait_until(
            lambda: any(p.suffix == ".sock" for p in c.wakeup.local.directory.iterdir()),  # type: ignore[union-attr]
            30,
            "the worker to listen",
        )
        time.sleep(0.5)  # the worker is idle now, waiting up to 60 s
        started = time.monotonic()
        with c.session() as db:
            tenant = db.scalar(select(Tenant).where(Tenant.name == "home"))
            assert tenant is not None
            body = MessageIn.model_validate({"to": ["r@example.org"], "text": "wake up"})
            c.outbox.submitter.submit(
                db, tenant.id, Owner("test", None), body, SubmitOptions.of(body)
            )
        wait_until(lambda: server.count == 2, 20, "the new message")
        assert time.monotonic() - started < 20
    finally:
        assert stop(worker) == 0
    assert not any(p.suffix == ".sock" for p in c.wakeup.local.directory.iterdir())


def test_sigkill_mid_batch_loses_nothing(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    n = 600
    server = smtp_servers.start()
    c = build(make_settings(tmp_path, sqlite_url, lease_s=5))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, n, max_connections=4)

    first = start_worker(c, tmp_path, "first")
    try:
        wait_until(lambda: server.count >= n // 4, 60, "the first quarter to arrive")
    finally:
        first.kill()  # SIGKILL: no chance to give anything back
        first.wait()
    at_kill = server.count
    assert at_kill < n, "the worker finished before it could be killed"

    second = start_worker(c, tmp_path, "second")
    try:
        wait_until(lambda: sent_count(c) == n, 60, "every message to be sent")
    finally:
        assert stop(second) == 0  # SIGTERM: a graceful exit

    seqs = received_seqs(server)
    assert set(seqs) == {str(i) for i in range(n)}, "a message was lost"
    duplicates = sum(seqs.values()) - n
    with c.sessions() as db:
        attempts = db.scalar(select(func.count()).select_from(MessageAttempt)) or 0
    print(f"\ncrash test: killed after {at_kill} of {n} arrived; {duplicates} duplicates")
    # A duplicate is a message the dead worker sent but could not record: at most what one
    # worker holds in flight. Every delivery that was recorded shows in the attempt log.
    assert duplicates <= 100
    assert attempts >= n
    c.engine.dispose()


@pytest.mark.postgres
def test_three_workers_on_postgres_deliver_each_message_once(
    tmp_path: Path, postgres_database: str, smtp_servers: SmtpServers
) -> None:
    n = 2000
    truncate_all(postgres_database)
    server = smtp_servers.start(keep_messages=True)
    c = build(make_settings(tmp_path, postgres_database, lease_s=30))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, n, max_connections=3)
    # Sessions with no mail left end after 1 s, not 10: until then they keep their
    # max_connections slots, and a worker without one hands its mail back and claims again.
    idle = {"MAILGATE_IDLE_SESSION_S": "1"}
    workers = [start_worker(c, tmp_path, f"w{i}", extra_env=idle) for i in range(3)]
    try:
        wait_until(lambda: sent_count(c) == n, 120, "every message to be sent")
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0, 0]
    seqs = received_seqs(server)
    assert set(seqs) == {str(i) for i in range(n)}, "a message was lost"
    twice = {s: k for s, k in seqs.items() if k > 1}
    with c.sessions() as db:
        query = select(MessageAttempt.outcome, MessageAttempt.smtp_response).where(
            MessageAttempt.outcome != "delivered"
        )
        retried = [(row[0], row[1]) for row in db.execute(query)]
    assert not twice, f"delivered more than once: {sorted(twice)[:10]}; retries: {retried[:5]}"
    with c.sessions() as db:
        query2 = select(MessageAttempt.worker, func.count()).group_by(MessageAttempt.worker)
        by_worker = {row[0]: row[1] for row in db.execute(query2)}
    assert sum(by_worker.values()) == n
    print(f"\npostgres: attempts by worker process {sorted(by_worker.values())}")
    c.engine.dispose()
