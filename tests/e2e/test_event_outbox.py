"""The event outbox (README "Webhooks"): an event row exists exactly when the change that
caused it was committed - attempts recorded by a worker, steering, submission with hold -
with the message's data and metadata, for subscribed and enabled endpoints only, in the
order of the changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.e2e.outbox_helpers import Rig, rig
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db.events import emit
from mailgate.adapters.db.tables import Tenant, WebhookEndpoint, WebhookEvent
from mailgate.domain.events import EventType, new_endpoint_id


def add_endpoint(r: Rig, events: list[str], tenant: str = "home", enabled: bool = True) -> str:
    with r.c.sessions.begin() as db:
        tid = db.scalar(select(Tenant.id).where(Tenant.name == tenant))
        eid = new_endpoint_id()
        now = r.clock()
        db.add(
            WebhookEndpoint(
                id=eid,
                tenant_id=tid,
                url="http://127.0.0.1:9/hook",
                events=events,
                enabled=enabled,
                secret_enc="x",
                created_at=now,
                updated_at=now,
            )
        )
    return eid


def events_of(r: Rig, endpoint_id: str) -> list[WebhookEvent]:
    with r.c.sessions() as db:
        return list(
            db.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.endpoint_id == endpoint_id)
                .order_by(WebhookEvent.id)
            )
        )


def test_changes_write_their_events_in_their_transaction(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    with rig(tmp_path, database_url) as r:
        r.add_server(server.config())
        every = add_endpoint(r, [t.value for t in EventType if t is not EventType.WEBHOOK_TEST])
        only_sent = add_endpoint(r, ["message.sent"])
        disabled = add_endpoint(r, ["message.sent", "message.held"], enabled=False)
        r.api.make_tenant(r.admin, "other")
        elsewhere = add_endpoint(r, ["message.sent"], tenant="other")

        held = r.send(to=["x@example.org"], text="t", hold=True, metadata={"order": "1"})
        sent = r.send(to=["x@example.org"], text="t", subject="S", metadata={"order": "2"})
        assert r.run_once() == 1
        assert r.post(f"/{held}/cancel").status_code == 200
        deferred = r.send(to=["y@example.org"], text="t")
        server.fail("RCPT", "451 4.3.0 later")
        assert r.run_once() == 1
        assert r.post("/hold", json={"ids": [deferred]}).status_code == 200

        got = [(e.type, e.message_id) for e in events_of(r, every)]
        assert got == [
            ("message.held", held),
            ("message.sent", sent),
            ("message.cancelled", held),
            ("message.deferred", deferred),
            ("message.held", deferred),
        ]
        assert [(e.type, e.message_id) for e in events_of(r, only_sent)] == [("message.sent", sent)]
        assert events_of(r, disabled) == [] and events_of(r, elsewhere) == []

        rows = events_of(r, every)
        body: dict[str, Any] = rows[1].payload
        assert body["type"] == "message.sent" and body["timestamp"].endswith("Z")
        data = body["data"]
        assert data["id"] == sent and data["tenant"] == "home" and data["server"] == "DEFAULT"
        assert data["status"] == "sent" and data["to"] == ["x@example.org"]
        assert data["subject"] == "S" and data["metadata"] == {"order": "2"}
        assert data["attempt"]["outcome"] == "delivered" and data["attempt"]["smtp_code"] == 250
        assert rows[3].payload["data"]["attempt"]["smtp_code"] == 451
        assert rows[0].payload["data"]["attempt"] is None
        assert rows[0].payload["data"]["metadata"] == {"order": "1"}
        # One event, one webhook-id; every row waits for delivery.
        assert len({e.event_id for e in rows}) == len(rows)
        assert {e.status for e in rows} == {"pending"}


def test_emit_hook_for_other_code(tmp_path: Path, sqlite_url: str) -> None:
    """``emit`` is what other services call in their transaction (server.paused)."""
    with rig(tmp_path, sqlite_url) as r:
        hook = add_endpoint(r, ["server.paused"])
        with r.c.sessions.begin() as db:
            tid = db.scalar(select(Tenant.id).where(Tenant.name == "home"))
            assert tid is not None
            n = emit(
                db.connection(),
                tid,
                EventType.SERVER_PAUSED,
                {"server": "DEFAULT", "reason": "quota"},
                now=r.clock(),
            )
            assert n == 1
            assert emit(db.connection(), tid, EventType.MESSAGE_SENT, {}, now=r.clock()) == 0
        # Rolled back with its transaction: no event.
        with r.c.sessions() as db, db.begin():
            emit(db.connection(), tid, EventType.SERVER_PAUSED, {"server": "X"}, now=r.clock())
            db.rollback()
        (row,) = events_of(r, hook)
        assert row.payload["data"] == {"server": "DEFAULT", "reason": "quota", "tenant": "home"}
