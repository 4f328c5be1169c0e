"""Limits that hold across every worker process (README "Provider limits, pauses and
fairness"), coordinated through the database: the limiter itself from several threads and
engines (as processes would), two real ``mailgate worker`` processes holding one
``messages_per_minute``, and ``recipients_per_day`` across workers. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from tests.clock import TestClock
from tests.conftest import make_settings
from tests.e2e.outbox_helpers import rig
from tests.e2e.test_worker_processes import queue_messages, start_worker, stop, wait_until
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.db.engine import make_engine
from mailgate.adapters.db.limits import SqlDeliveryLimits
from mailgate.adapters.db.tables import (
    EmailServer,
    Message,
    MessageAttempt,
    MessageContent,
    ServerConnection,
)
from mailgate.bootstrap import build, first_start
from mailgate.domain.messages import new_message_id
from mailgate.entrypoints.worker import Worker
from mailgate.schemas.email_server import LIMIT_PRESETS

# A session with no mail left says QUIT after 1 s, not 10: until then it holds its connection
# slot, and the other process, with mail for the same configuration, waits for that slot.
SHORT_IDLE = {"MAILGATE_IDLE_SESSION_S": "1"}


def _server_id(c: Any, name: str = "DEFAULT") -> int:
    with c.sessions() as db:
        sid = db.scalar(select(EmailServer.id).where(EmailServer.name == name))
        assert sid is not None
        return int(sid)


def test_the_limiter_holds_across_engines_and_threads(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, database_url) as r:
        r.add_server(server.config())
        sid = _server_id(r.c)
        # Two engines: what two processes would have.
        engines = [make_engine(r.c.settings.effective_database_url) for _ in range(2)]
        clock = TestClock(r.clock.now)
        limiters = [SqlDeliveryLimits(e, clock, timedelta(seconds=30)) for e in engines]
        try:
            # messages_per_minute 60: slots one second apart, whoever reserves them.
            got = []
            for i in range(6):
                got += limiters[i % 2].reserve(sid, 1.0, None, [1], 10.0)
            assert [(s.at - clock.now).total_seconds() for s in got] == [0, 1, 2, 3, 4, 5]
            assert all(s.keep for s in got)
            # Further than the worker may hold a message: not reserved, nothing used up.
            (far,) = limiters[0].reserve(sid, 1.0, None, [1], 5.5)
            assert not far.keep and (far.at - clock.now).total_seconds() == 6
            (next_one,) = limiters[1].reserve(sid, 1.0, None, [1], 10.0)
            assert (next_one.at - clock.now).total_seconds() == 6

            # max_connections 3, twelve sessions asking at once from two engines.
            won: list[int | None] = []
            barrier = threading.Barrier(12)

            def take(i: int) -> None:
                barrier.wait()
                won.append(limiters[i % 2].acquire_connection(sid, 3, f"w{i}"))

            threads = [threading.Thread(target=take, args=(i,)) for i in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(w for w in won if w is not None) == [0, 1, 2]
            assert limiters[0].connections_held(sid) == 3
            # A released slot is free again; a holder that died frees its slot with the lease.
            limiters[0].release_connection(sid, 0, "nobody")  # not the holder: no effect
            assert limiters[1].acquire_connection(sid, 3, "late") is None
            clock.offset += timedelta(seconds=31)
            assert limiters[1].acquire_connection(sid, 3, "late") == 0

            # recipients_per_day 10: counted for both, and the 25-hour window frees them.
            day = [s.keep for s in limiters[0].reserve(sid, 0.0, 10, [4, 4], 10.0)]
            day += [s.keep for s in limiters[1].reserve(sid, 0.0, 10, [4, 2], 10.0)]
            assert day == [True, True, False, True]
            (over,) = limiters[1].reserve(sid, 0.0, 10, [1], 10.0)
            assert not over.keep and over.reason and "recipients_per_day (10)" in over.reason
            clock.offset += timedelta(hours=25)
            assert limiters[0].reserve(sid, 0.0, 10, [10], 10.0)[0].keep
        finally:
            for e in engines:
                e.dispose()


def _stamp_arrivals(server: SmtpServer) -> list[float]:
    arrivals: list[float] = []
    record = server.record

    def stamped(msg: Any) -> None:
        arrivals.append(time.monotonic())
        record(msg)

    server.record = stamped  # type: ignore[method-assign]
    return arrivals


def test_two_worker_processes_hold_one_messages_per_minute(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    n = 8
    server = smtp_servers.start()
    arrivals = _stamp_arrivals(server)
    c = build(make_settings(tmp_path, database_url, lease_s=5))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, n, max_connections=3)
    with c.session() as db:
        row = db.scalar(select(EmailServer))
        assert row is not None
        row.config = {**row.config, "limits": {**row.config["limits"], "messages_per_minute": 60}}
    # One message at a time each, so that both processes take part.
    one = {"MAILGATE_WORKER_BATCH": "1", **SHORT_IDLE}
    workers = [start_worker(c, tmp_path, f"w{i}", poll_s=0.2, extra_env=one) for i in range(2)]
    try:
        wait_until(lambda: server.count == n, 60, "every message")
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0]
    # One a second for the installation: eight take seven seconds (per process, as before,
    # they took half as long). A message may arrive late (a loaded machine), never early.
    span = arrivals[-1] - arrivals[0]
    assert span >= (n - 1) * 1.0 - 1.0, [round(a - arrivals[0], 2) for a in arrivals]
    with c.sessions() as db:
        workers_seen = set(db.scalars(select(MessageAttempt.worker)))
    print(f"\nrate across processes: {n} in {span:.1f} s by {len(workers_seen)} processes")
    assert len({w.rsplit(":", 1)[0] for w in workers_seen}) == 2
    c.engine.dispose()


def test_recipients_per_day_holds_across_workers(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, database_url) as r:
        r.add_server(server.config(limits={"recipients_per_day": 5}))
        ids = [r.send(to=["a@example.org", "b@example.org"]) for _ in range(4)]
        other = build(r.c.settings, clock=r.clock)
        try:
            asyncio.run(Worker(other, worker_id="other").run_once())
            r.run_once()
        finally:
            other.engine.dispose()
        # Two messages of two recipients fit in five; the others wait, deferred, not failed.
        assert server.count == 2
        views = [r.get(mid) for mid in ids]
        waiting = [v for v in views if v["status"] != "sent"]
        assert len(waiting) == 2
        assert {v["status"] for v in waiting} == {"deferred"}
        assert all("recipients_per_day (5)" in (v["last_error"] or "") for v in waiting)
        r.clock.advance(hours=25, minutes=1)
        r.run_once()
        assert server.count == 4


def test_presets_come_from_one_place_and_apply_as_limits(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config())
        got = r.api.request("GET", "/api/v1/tenants/home/limit-presets", r.admin)
        assert got.status_code == 200, got.text
        presets = {p["name"]: p for p in got.json()["items"]}
        assert set(presets) == set(LIMIT_PRESETS)
        microsoft = presets["microsoft_365"]["limits"]
        assert microsoft == {
            "max_connections": 3,
            "messages_per_minute": 30,
            "recipients_per_day": 10_000,
        }
        patched = r.api.request(
            "PATCH",
            "/api/v1/tenants/home/email-servers/DEFAULT",
            r.admin,
            json={"limits": microsoft},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["limits"]["recipients_per_day"] == 10_000


def test_two_worker_processes_hold_one_max_connections(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    n = 12
    server = smtp_servers.start()
    server.delay_data_end(0.3, times=None)  # every session stays busy a while
    c = build(make_settings(tmp_path, database_url, lease_s=5))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, n, max_connections=2)
    most = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal most
        while not sampling.is_set():
            open_now = sum(
                1
                for p in list(server._protocols)
                if p.transport is not None and not p.transport.is_closing()
            )
            most = max(most, open_now)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    # Four messages at a time each: both processes have mail for the configuration at once.
    four = {"MAILGATE_WORKER_BATCH": "4", **SHORT_IDLE}
    workers = [start_worker(c, tmp_path, f"w{i}", poll_s=0.2, extra_env=four) for i in range(2)]
    try:
        wait_until(lambda: server.count == n, 60, "every message")
    finally:
        codes = [stop(w) for w in workers]
        sampling.set()
        sampler.join()
    assert codes == [0, 0]
    # Per process, as before, the two would have held up to four connections (both claim
    # mail for it: four messages each at a time). Which process sends is left to them.
    assert most <= 2, most
    print(f"\nmax_connections 2 across two processes: at most {most} open at once")
    c.engine.dispose()


def test_mail_goes_to_the_process_whose_sessions_hold_every_connection(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    """A worker that claims mail of a configuration whose connection slots are all held by
    another process's open sessions gives it back at once, and that process sends it over
    them. It used to hold the mail until a slot came free: until the other's idle sessions
    closed (10 s by default, 60 s here) - with two worker processes, the tail of a burst
    waited that long while those sessions sat idle."""
    server = smtp_servers.start()
    c = build(make_settings(tmp_path, database_url, lease_s=5))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, 2, max_connections=2)
    sid = _server_id(c)
    with c.sessions() as db:
        first = db.scalars(select(Message)).first()
        assert first is not None
        template = {col.key: getattr(first, col.key) for col in Message.__table__.columns}
        raw = db.scalar(select(MessageContent.raw))
    # The first process sends both over two sessions, which then stay open and idle for a
    # minute (holding both slots); it polls only every minute: a wake-up brings it mail.
    holder = start_worker(c, tmp_path, "holder", 60, {"MAILGATE_IDLE_SESSION_S": "60"})
    other = None
    try:
        wait_until(lambda: server.count == 2, 60, "the first two messages")
        with c.sessions() as db:
            held = db.scalars(
                select(ServerConnection.holder).where(ServerConnection.server_id == sid)
            )
            assert len(list(held)) == 2
        # Three more, inserted without waking anyone: the second process, started now,
        # claims them.
        with c.session() as db:
            for _i in range(3):
                mid = new_message_id()
                db.execute(insert(Message), [{**template, "id": mid}])
                db.execute(insert(MessageContent), [{"message_id": mid, "raw": raw}])
        started = time.monotonic()
        other = start_worker(c, tmp_path, "other", 0.5)
        wait_until(lambda: server.count == 5, 60, "the three")
        took = time.monotonic() - started
    finally:
        codes = [stop(w) for w in (holder, other) if w is not None]
    assert codes == [0, 0]
    with c.sessions() as db:
        by = Counter(db.scalars(select(MessageAttempt.worker)))
    print(f"\nthree messages in {took:.1f} s; attempts by worker: {dict(by)}")
    # The second process's start-up (1-3 s) and a quarter of a second of waiting for a
    # slot; holding the mail until the holder's idle sessions closed took over 60 s.
    assert took < 15, took
    assert len(by) == 1  # all five by the holder: the other had no connection to send on
    c.engine.dispose()
