"""Reliability (issue 14): what a slow or lost reply after the final dot does, through the
API, the outbox and the worker into real aiosmtpd servers."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.conftest import make_settings
from tests.e2e.outbox_helpers import rig
from tests.e2e.test_worker_processes import (
    queue_messages,
    received_seqs,
    sent_count,
    start_worker,
    stop,
    wait_until,
)
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db.tables import Message, MessageAttempt, MessageContent, Process
from mailgate.bootstrap import build, first_start


def _attempts(view: dict[str, Any]) -> list[tuple[str, int | None, bool]]:
    return [(a["outcome"], a["smtp_code"], a["possibly_delivered"]) for a in view["attempts"]]


def test_a_slow_reply_to_the_final_dot_is_awaited_past_the_command_timeout(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    # Before: the reply after the dot had the command timeout, so a server answering after
    # 65 s (command_s 60) received the message again and again.
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config(timeouts={"command_s": 0.3, "data_done_s": 10}))
        server.delay_data_end(1.0)
        mid = r.send(to=["a@example.org"], subject="slow")
        assert r.run_once() == 1
        view = r.get(mid)
        assert view["status"] == "sent"
        assert _attempts(view) == [("delivered", 250, False)]
        assert server.count == 1


def test_no_reply_to_the_final_dot_is_possibly_delivered_retried_late_and_flagged(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, sqlite_url, retry_base_s=60, possibly_delivered_retry_s=3000) as r:
        r.add_server(server.config(timeouts={"command_s": 5, "data_done_s": 0.5}))
        server.delay_data_end(3.0)
        mid = r.send(to=["a@example.org"], subject="late")
        assert r.run_once() == 1
        server.wait_for(1)  # the server took it; its 250 came too late
        view = r.get(mid)
        assert view["status"] == "deferred"
        assert view["last_error"].startswith("possibly delivered: no reply to the end of")
        assert "0.5 s" in view["last_error"]
        assert _attempts(view) == [("deferred", None, True)]
        # Not after the ordinary backoff (60 s +- 20 %) ...
        r.clock.advance(seconds=2000)
        assert r.run_once() == 0
        # ... but after the long delay for mail the server may have.
        r.clock.advance(seconds=1001)
        assert r.run_once() == 1
        view = r.get(mid)
        assert view["status"] == "sent"
        assert _attempts(view) == [("deferred", None, True), ("delivered", 250, False)]
        assert server.wait_for(2) and server.count == 2  # the repeat, and the log shows it
        metrics = r.api.client.get("/metrics").text
        assert "mailgate_delivery_possibly_delivered_total 1.0" in metrics


def test_a_connection_lost_after_the_final_dot_is_possibly_delivered(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    with rig(tmp_path, sqlite_url) as r:
        for pipelining in (True, False):
            server = smtp_servers.start(pipelining=pipelining)
            name = f"P{pipelining}"
            r.add_server(server.config(name, timeouts={"data_done_s": 5}))
            server.delay_data_end(0.2, then="disconnect")
            mid = r.send(server=name, to=["a@example.org"], subject="cut")
            assert r.run_once() == 1
            view = r.get(mid)
            assert view["status"] == "deferred", pipelining
            assert view["last_error"].startswith("possibly delivered: no reply to the end of")
            assert _attempts(view) == [("deferred", None, True)]


@pytest.mark.slow
def test_sigkill_mid_delivery_every_repeat_is_flagged(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    """A worker process killed with SIGKILL while it delivers: at most the messages whose
    attempt had started (one per SMTP session) can reach the server twice, and every message
    that did shows a possibly-delivered attempt in its log."""
    n, sessions = 400, 4
    server = smtp_servers.start()
    c = build(make_settings(tmp_path, database_url, lease_s=5))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, n, max_connections=sessions)
    env = {"MAILGATE_POSSIBLY_DELIVERED_RETRY_S": "1"}

    first = start_worker(c, tmp_path, "first", extra_env=env)
    try:
        wait_until(lambda: server.count >= n // 4, 60, "the first quarter to arrive")
    finally:
        first.kill()  # SIGKILL: no chance to record anything
        first.wait()
    at_kill = server.count
    assert at_kill < n, "the worker finished before it could be killed"

    second = start_worker(c, tmp_path, "second", extra_env=env)
    try:
        wait_until(lambda: sent_count(c) == n, 90, "every message to be sent")
    finally:
        assert stop(second) == 0

    seqs = received_seqs(server)
    assert set(seqs) == {str(i) for i in range(n)}, "a message was lost"
    repeated = {seq for seq, times in seqs.items() if times > 1}
    with c.sessions() as db:
        seq_of = {
            mid: raw.split(b"X-Seq: ", 1)[1].split(b"\r\n", 1)[0].decode()
            for mid, raw in db.execute(select(MessageContent.message_id, MessageContent.raw))
        }
        flagged = {
            seq_of[mid]
            for mid in db.scalars(
                select(MessageAttempt.message_id).where(MessageAttempt.possibly_delivered)
            )
        }
    print(
        f"\ncrash test: killed after {at_kill} of {n} arrived; {len(repeated)} repeated, "
        f"{len(flagged)} flagged possibly delivered"
    )
    assert repeated <= flagged, f"repeats without a flag: {sorted(repeated - flagged)}"
    assert len(repeated) <= sessions
    assert len(flagged) <= sessions
    c.engine.dispose()


@pytest.mark.slow
def test_a_dead_workers_messages_are_taken_over_within_seconds_not_after_the_lease(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    """Leases of 120 s, heartbeats: a worker killed with SIGKILL is found dead by the one
    still running after MAILGATE_WORKER_DEAD_AFTER_S (3 s here), which takes over its
    messages at once; nothing waits for the lease."""
    n = 300
    server = smtp_servers.start()
    c = build(make_settings(tmp_path, database_url, lease_s=120))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, n, max_connections=2)
    env = {
        "MAILGATE_LEASE_S": "120",
        "MAILGATE_WORKER_DEAD_AFTER_S": "3",
        "MAILGATE_POSSIBLY_DELIVERED_RETRY_S": "1",
    }
    first = start_worker(c, tmp_path, "first", extra_env=env)
    try:
        wait_until(lambda: server.count >= 20, 60, "the first worker to deliver")
        second = start_worker(c, tmp_path, "second", extra_env=env)
    finally:
        first.kill()
        first.wait()
    killed_at = time.monotonic()
    try:
        wait_until(lambda: sent_count(c) == n, 60, "every message to be sent")
        recovered_s = time.monotonic() - killed_at
    finally:
        assert stop(second) == 0
    print(f"\ntakeover: all {n} sent {recovered_s:.1f} s after the kill (lease 120 s)")
    assert recovered_s < 60
    assert set(received_seqs(server)) == {str(i) for i in range(n)}
    with c.sessions() as db:
        alive = list(db.scalars(select(Process.id)))
    assert alive == []  # the dead one was forgotten, the stopped one unregistered
    c.engine.dispose()


@pytest.mark.slow
def test_claimed_messages_not_yet_started_can_be_held_and_cancelled(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    """A worker claims no more than its sessions can start soon, and of what it claimed,
    what has not started can still be held or cancelled: the worker does not send it."""
    n = 200
    server = smtp_servers.start()
    server.delay_data_end(1.0, times=None)  # one message per second on one connection
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config(limits={"max_connections": 1}))
        ids = [r.send(to=["a@example.org"], subject=f"m{i}") for i in range(n)]
        worker = start_worker(r.c, tmp_path, "w", extra_env={"MAILGATE_WORKER_BATCH": "200"})
        try:
            wait_until(lambda: server.count >= 1, 30, "the first delivery")
            with r.c.sessions() as db:
                claimed = list(db.scalars(select(Message.id).where(Message.status == "sending")))
            # One session: the lanes hold at most CLAIM_FLOOR (50), not the batch (200).
            assert 1 <= len(claimed) <= 50, len(claimed)
            hold = r.post("/hold", json={"ids": claimed[: len(claimed) // 2]}).json()
            cancel = r.post("/cancel", json={"ids": claimed[len(claimed) // 2 :]}).json()
            # Only the one (or two) in an attempt right now are refused.
            assert hold["changed"] + cancel["changed"] >= len(claimed) - 2
            refused = hold["skipped"] + cancel["skipped"]
            assert all("being delivered" in s["reason"] for s in refused), refused
            stopped = set(hold["ids"]) | set(cancel["ids"])
            wait_until(lambda: server.count >= 5, 30, "more deliveries")
        finally:
            assert stop(worker) == 0
        delivered = {str(m.message["Subject"]) for m in server.received}
        subject = {mid: f"m{i}" for i, mid in enumerate(ids)}
        assert not delivered & {subject[mid] for mid in stopped}
        statuses = {r.get(mid)["status"] for mid in stopped}
        assert statuses <= {"held", "cancelled"}


@pytest.mark.slow
def test_shutdown_with_a_server_that_does_not_answer_is_capped_and_hands_back(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    """SIGTERM while the server sits on the final dot (data_done_s 600): the worker waits
    MAILGATE_SHUTDOWN_DRAIN_S (2 s here), not 10 minutes and not much more than the drain,
    exits 0, and hands everything back: the open attempt as possibly delivered, the claimed
    rest ready again."""
    server = smtp_servers.start()
    server.delay_data_end(120, times=None)
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config(limits={"max_connections": 1}, timeouts={"data_done_s": 600}))
        ids = [r.send(to=["a@example.org"], subject=f"m{i}") for i in range(5)]
        worker = start_worker(r.c, tmp_path, "w", extra_env={"MAILGATE_SHUTDOWN_DRAIN_S": "2"})
        wait_until(lambda: server.count >= 1, 30, "the first message to reach the server")
        started = time.monotonic()
        assert stop(worker) == 0
        stopped_s = time.monotonic() - started
        # The drain (2 s) and the process's exit: the stopped session is dropped, not sent a
        # QUIT the server would not answer (5 s, the command timeout), and the journal is
        # not waited for once it has written what finished (it waited 5 s: 7.8 s in all).
        assert stopped_s < 5.5, stopped_s
        views = [r.get(mid) for mid in ids]
        out = [v for v in views if v["attempts"]]
        assert len(out) == 1
        assert out[0]["status"] == "deferred" and out[0]["attempts"][0]["possibly_delivered"]
        assert "stopped during the attempt" in out[0]["attempts"][0]["smtp_response"]
        assert {v["status"] for v in views if not v["attempts"]} == {"queued"}
        with r.c.sessions() as db:
            assert list(db.scalars(select(Message.id).where(Message.locked_by.is_not(None)))) == []


@pytest.mark.slow
def test_results_are_kept_and_written_again_when_the_database_refuses_writes(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    """The worker process's writes fail for a while (its file size limit is lowered to 0,
    as on a full disk): the outcomes it holds are written again once writes work, none is
    dropped, so nothing is sent twice and nothing waits for a lease."""
    n = 30
    server = smtp_servers.start()
    server.delay_data_end(0.2, times=None)
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(server.config(limits={"max_connections": 2}))
        ids = [r.send(to=["a@example.org"], subject=f"m{i}") for i in range(n)]
        worker = start_worker(r.c, tmp_path, "w", extra_env={"MAILGATE_LOG_LEVEL": "INFO"})
        try:
            wait_until(lambda: server.count >= 5, 30, "the first deliveries")
            _soft, hard = resource.prlimit(worker.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, (0, hard))
            try:
                time.sleep(2.0)  # outcomes arrive meanwhile and cannot be written
            finally:
                resource.prlimit(worker.pid, resource.RLIMIT_FSIZE, (hard, hard))
            wait_until(
                lambda: all(r.row(mid).status == "sent" for mid in ids), 60, "every message sent"
            )
        finally:
            assert stop(worker) == 0
        log = (tmp_path / "w.log").read_text()
        # (What the worker logged while it could write no file is lost; what it logged after
        # says the writes failed and were repeated.)
        assert "writing results works again" in log, log
        assert "database writes work again" in log, log
        subjects = [str(m.message["Subject"]) for m in server.received]
        assert sorted(subjects) == sorted(f"m{i}" for i in range(n)), "a repeat or a loss"
        assert not any(a["possibly_delivered"] for mid in ids for a in r.get(mid)["attempts"])
