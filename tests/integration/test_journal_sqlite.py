"""The delivery journal on SQLite's DBAPI connection (``adapters/db/journal_sqlite.py``)
writes exactly what SQLAlchemy's path writes: the same delivery scenario - delivered,
deferred, failed, some recipients refused, a retry, webhook events - run once each way on
a hand-driven clock, and the rows compared column by column (all but row ids, message ids,
durations and the retry jitter)."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.e2e.outbox_helpers import rig
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db import prepared
from mailgate.adapters.db.tables import Message, MessageAttempt, WebhookEvent


def _run(tmp: Path, template: Path, smtp_servers: SmtpServers) -> dict[str, Any]:
    target = tmp / "data" / "mailgate.db"
    target.parent.mkdir(parents=True)
    shutil.copy(template, target)
    server = smtp_servers.start()
    with rig(tmp, f"sqlite:///{target}", retry_base_s=60) as r:
        start = r.clock()
        r.add_server(server.config())
        hook = r.api.request(
            "POST",
            "/api/v1/tenants/home/webhooks",
            r.admin,
            json={"url": "https://hooks.example.com/mailgate"},
        )
        assert hook.status_code == 201, hook.text
        ids = {"ok": r.send(to=["a@example.org"], subject="ok")}
        r.run_once()
        server.fail("DATA_END", "451 4.3.0 try again later")
        ids["temp"] = r.send(to=["a@example.org"], subject="temp")
        r.run_once()
        server.fail("DATA_END", "554 5.7.1 message refused")
        ids["perm"] = r.send(to=["a@example.org"], subject="perm")
        r.run_once()
        server.refuse("gone@example.org", "550 5.1.1 no such user")
        server.fail("RCPT", "450 4.2.1 mailbox busy")
        ids["partial"] = r.send(
            to=["busy@example.org", "gone@example.org", "ok@example.org"], subject="partial"
        )
        r.run_once()
        r.clock.advance(seconds=75)
        r.run_once()  # the deferred ones again: now delivered
        name = {mid: key for key, mid in ids.items()}
        with r.c.sessions() as db:
            messages = {
                name[m.id]: (
                    m.status,
                    m.attempt_count,
                    m.last_error,
                    m.recipient_status,
                    m.attempt_started_at,
                    m.next_attempt_at is None,
                    m.locked_by,
                    m.locked_until,
                    m.updated_at,
                )
                for m in db.scalars(select(Message))
            }
            attempts = sorted(
                (
                    name[a.message_id],
                    a.at,
                    a.outcome,
                    a.smtp_code,
                    a.smtp_response,
                    a.worker,
                    a.recipients,
                    a.possibly_delivered,
                )
                for a in db.scalars(select(MessageAttempt))
            )
            events = sorted(
                (
                    name[e.message_id or ""],
                    e.type,
                    e.status,
                    e.created_at,
                    _event_data(e.payload["data"]),
                )
                for e in db.scalars(select(WebhookEvent))
            )
    return _relative({"messages": messages, "attempts": attempts, "events": events}, start)


def _event_data(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data without the message id and the attempt's duration, its time parsed."""
    out = {k: v for k, v in data.items() if k != "id"}
    if out.get("attempt"):
        attempt = {k: v for k, v in out["attempt"].items() if k != "ms"}
        attempt["at"] = datetime.fromisoformat(attempt["at"].replace("Z", "+00:00"))
        out["attempt"] = attempt
    return out


def _relative(value: Any, start: datetime) -> Any:
    """Times as offsets from the run's start (each run's clock starts at its own now)."""
    if isinstance(value, datetime):
        return value - start
    if isinstance(value, dict):
        return {k: _relative(v, start) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_relative(v, start) for v in value)
    return value


def test_the_rows_are_sqlalchemys_rows(
    tmp_path: Path,
    sqlite_template: Path,
    smtp_servers: SmtpServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert prepared.RAW
    raw = _run(tmp_path / "raw", sqlite_template, smtp_servers)
    monkeypatch.setattr(prepared, "RAW", False)
    through_sqlalchemy = _run(tmp_path / "sqlalchemy", sqlite_template, smtp_servers)
    assert raw == through_sqlalchemy
    # The scenario reached every kind of row it is meant to compare.
    assert {m[0] for m in raw["messages"].values()} == {"sent", "failed"}
    assert {a[2] for a in raw["attempts"]} == {"delivered", "deferred", "failed"}
    assert any(a[6] for a in raw["attempts"])  # per-recipient outcomes
    assert any(m[3] for m in raw["messages"].values())  # per-recipient state
    assert {e[1] for e in raw["events"]} >= {"message.sent", "message.deferred", "message.failed"}
