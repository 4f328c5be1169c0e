"""Provider quota and throttling answers pause the configuration, for every worker (README
"Provider limits, pauses and fairness"): against real aiosmtpd servers, on SQLite and
PostgreSQL, on the rig's hand-driven clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.conftest import make_settings
from tests.e2e.outbox_helpers import Rig, rig
from tests.e2e.test_event_outbox import add_endpoint, events_of
from tests.e2e.test_worker_processes import queue_messages, start_worker, stop, wait_until
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.db.tables import EmailServer, Message, ServerDelivery
from mailgate.bootstrap import build, first_start
from mailgate.entrypoints.worker import Worker
from mailgate.services.oauth2.alerts import OAuth2Alerts

QUOTA = (
    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to "
    "process message due to a permanent exception with message Cannot submit message."
)


def _mails(server: SmtpServer) -> int:
    return sum(1 for c in server.commands if c.startswith("MAIL"))


def _statuses(r: Rig, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for mid in ids:
        status = r.get(mid)["status"]
        out[status] = out.get(status, 0) + 1
    return out


def _state(r: Rig, name: str = "DEFAULT") -> ServerDelivery | None:
    with r.c.sessions() as db:
        sid = db.scalar(select(EmailServer.id).where(EmailServer.name == name))
        return db.get(ServerDelivery, sid)


def test_a_quota_answer_pauses_the_configuration_and_one_probe_follows(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, database_url) as r:
        r.add_server(server.config())
        ids = [r.send(to=[f"u{i}@example.org"], subject=f"m{i}") for i in range(10)]
        server.fail("DATA_END", QUOTA, times=None)

        r.run_once()
        # Up to max_connections (3) were in flight when the first answer came; the rest
        # went back untried.
        first = _mails(server)
        assert 1 <= first <= 3
        assert _statuses(r, ids) == {"deferred": 10}
        state = _state(r)
        assert state is not None and state.pause_kind == "quota"
        assert state.paused_until == r.clock.now + timedelta(hours=1)
        assert "SubmissionQuotaExceeded" in (state.last_reply or "")
        with r.c.sessions() as db:
            rows = db.scalars(select(Message).where(Message.id.in_(ids))).all()
            # Not counted toward the messages' backoff, and none is due before the pause ends.
            assert {m.attempt_count for m in rows} == {0}
            assert all(m.next_attempt_at >= state.paused_until for m in rows)
        view = r.get(ids[0])
        assert "5.2.0" in (view["last_error"] or "")

        # Mail that arrives meanwhile waits too; a claim moves it to the pause's end, so that
        # claims do not pass over it again and again.
        later = [r.send(to=["late@example.org"], subject="late") for _ in range(2)]
        assert r.run_once() == 0
        assert {r.row(mid).next_attempt_at for mid in later} == {state.paused_until}
        ids += later

        # Nothing is tried while paused - also not by another process (a new container on
        # the same database: the pause is in the database, it survives a restart).
        r.clock.advance(minutes=59)
        assert r.run_once() == 0
        other = build(r.c.settings, clock=r.clock)
        try:
            assert asyncio.run(Worker(other, worker_id="other").run_once()) == 0
        finally:
            other.engine.dispose()
        assert _mails(server) == first

        # The hour is over: exactly one probe, which is told the same: the next pause.
        r.clock.advance(minutes=1, seconds=1)
        assert r.run_once() == 1
        assert _mails(server) == first + 1
        state = _state(r)
        assert state is not None and state.pauses == 2
        assert set(_statuses(r, ids)) <= {"deferred", "queued"}  # none failed, none sent

        # The quota is back: the probe goes through, the pause ends, the rest follows at once.
        server.faults.clear()
        r.clock.advance(hours=1, seconds=1)
        assert r.run_once() == 12
        assert server.count == 12
        assert _statuses(r, ids) == {"sent": 12}
        state = _state(r)
        assert state is not None and state.paused_until is None and state.pauses == 0


def test_a_throttling_reply_backs_off_and_does_not_touch_other_configurations(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers
) -> None:
    throttled = smtp_servers.start()
    healthy = smtp_servers.start()
    with rig(tmp_path, sqlite_url) as r:
        r.add_server(throttled.config("SLOW", limits={"max_connections": 1}))
        r.add_server(healthy.config("FAST"))
        throttled.fail("MAIL", "421 4.7.0 Try again later, closing connection.", times=None)
        slow = [r.send(server="SLOW", to=["a@example.org"]) for _ in range(5)]
        fast = [r.send(server="FAST", to=["b@example.org"]) for _ in range(5)]
        r.run_once()
        assert _mails(throttled) == 1
        assert healthy.count == 5
        assert _statuses(r, slow) == {"deferred": 5}
        assert _statuses(r, fast) == {"sent": 5}
        state = _state(r, "SLOW")
        assert state is not None and state.pause_kind == "throttled"
        # The first throttling pause is MAILGATE_PAUSE_BACKOFF_S (60 s), the next twice that.
        r.clock.advance(seconds=61)
        assert r.run_once() == 1
        state = _state(r, "SLOW")
        assert state is not None and state.pauses == 2
        assert state.paused_until == r.clock.now + timedelta(seconds=120)


class _Mailer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send_system_mail(self, to: str, subject: str, text: str) -> None:
        self.sent.append((to, subject, text))


def _server_view(r: Rig, name: str = "DEFAULT") -> dict[str, Any]:
    got = r.api.request("GET", f"/api/v1/tenants/home/email-servers/{name}", r.admin)
    assert got.status_code == 200, got.text
    view: dict[str, Any] = got.json()
    return view


def test_the_pause_shows_on_the_server_tells_the_admins_and_resume_ends_it(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, database_url) as r:
        r.add_server(server.config())
        assert _server_view(r)["delivery"] == {
            "state": "active",
            "paused_until": None,
            "reason": None,
            "last_reply": None,
        }
        made = r.api.request(
            "POST",
            "/api/v1/users",
            r.admin,
            json={
                "username": "ann",
                "email": "ann@example.com",
                "password": "pw-ann-long-enough-1",
                "roles": {"home": "admin"},
            },
        )
        assert made.status_code == 201, made.text
        hook = add_endpoint(r, ["server.paused"])
        ids = [r.send(to=[f"u{i}@example.org"]) for i in range(4)]
        server.fail("MAIL", "550 5.4.5 Daily user sending limit exceeded. - gsmtp", times=None)
        r.run_once()

        delivery = _server_view(r)["delivery"]
        assert delivery["state"] == "paused"
        assert delivery["paused_until"] == (r.clock.now + timedelta(hours=1)).isoformat().replace(
            "+00:00", "Z"
        )
        assert "quota" in delivery["reason"] and "5.4.5" in delivery["last_reply"]
        assert "mailgate_servers_paused 1.0" in r.api.client.get("/metrics").text
        # The list shows it too (the UI's badge reads it there).
        listed = r.api.request("GET", "/api/v1/tenants/home/email-servers", r.admin).json()
        assert [s["delivery"]["state"] for s in listed["items"]] == ["paused"]

        (event,) = events_of(r, hook)
        assert event.type == "server.paused"
        assert event.payload["data"]["server"] == "DEFAULT"
        assert event.payload["data"]["kind"] == "quota"

        mailer = _Mailer()
        alerts = OAuth2Alerts(
            sessions=r.c.sessions, mailer=mailer, clock=r.clock, public_base_url="http://x"
        )
        assert alerts.send_due() == 1
        ((to, subject, text),) = mailer.sent
        assert to == "ann@example.com" and "paused" in subject and "5.4.5" in text
        assert alerts.send_due() == 0  # once

        # An admin resumes (servers:write, see the access matrix), and the mail goes at once.
        server.faults.clear()
        resumed = r.api.request(
            "POST", "/api/v1/tenants/home/email-servers/DEFAULT/resume", r.admin
        )
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["delivery"]["state"] == "active"
        assert resumed.json()["delivery"]["last_reply"].startswith("550")
        assert "mailgate_servers_paused 0.0" in r.api.client.get("/metrics").text
        assert r.run_once() == 4
        assert _statuses(r, ids) == {"sent": 4}
        again = r.api.request("POST", "/api/v1/tenants/home/email-servers/DEFAULT/resume", r.admin)
        assert again.status_code == 200 and again.json()["delivery"]["state"] == "active"


def test_a_pause_survives_killing_the_worker_process(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    """Real ``mailgate worker`` processes, real time: the quota pause (3 s here) is in the
    database; a worker killed with SIGKILL during it and a new one started hold it, and the
    new one sends exactly one probe when it ends."""
    server = smtp_servers.start()
    server.fail("DATA_END", QUOTA, times=None)
    c = build(make_settings(tmp_path, database_url, lease_s=5))
    first_start(c, echo=lambda _m: None)
    queue_messages(c, server, 6, max_connections=1)
    pause = {"MAILGATE_PAUSE_QUOTA_S": "5"}
    first = start_worker(c, tmp_path, "first", poll_s=0.2, extra_env=pause)
    try:
        wait_until(lambda: _mails(server) >= 1, 30, "the first attempt")
        wait_until(lambda: _paused(c), 10, "the pause")
    finally:
        first.kill()
        first.wait()
    tried = _mails(server)
    second = start_worker(c, tmp_path, "second", poll_s=0.2, extra_env=pause)
    try:
        with c.sessions() as db:
            until = db.scalar(select(ServerDelivery.paused_until))
        assert until is not None
        # Until the pause ends the new process tries nothing (however long it took to start).
        while datetime.now(UTC) < until - timedelta(seconds=0.3):
            assert _mails(server) == tried
            time.sleep(0.05)
        wait_until(lambda: _mails(server) == tried + 1, 15, "one probe after the pause")
        time.sleep(1.0)  # the probe got the quota answer again: no second one
        assert _mails(server) == tried + 1
        server.faults.clear()
        wait_until(lambda: server.count == 6, 30, "everything once the quota is back")
    finally:
        assert stop(second) == 0
    with c.sessions() as db:
        statuses = set(db.scalars(select(Message.status)))
    assert statuses == {"sent"}
    c.engine.dispose()


def _paused(c: Any) -> bool:
    with c.sessions() as db:
        return bool(db.scalar(select(ServerDelivery.paused_until)))
