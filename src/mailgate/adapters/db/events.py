"""The hook that writes webhook events into the event outbox, in the caller's transaction.

Whatever changes state - recording an attempt, steering a message, an OAuth2 notice, a
pause - calls ``emit`` (or ``emit_for_messages``) on the connection of its own transaction,
so an event exists exactly when its change was committed (the outbox pattern; README
"Webhooks"). Only subscribed, enabled endpoints of the tenant get a row: a tenant without
webhooks costs one indexed query per call, nothing more. Delivering the rows is
``services/events/dispatcher.py``'s work, outside any transaction.

Usage (helper code elsewhere)::

    from mailgate.adapters.db.events import emit
    emit(db.connection(), tenant_id, EventType.SERVER_PAUSED,
         {"server": name, "paused_until": ..., "reason": ...}, now=clock())
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from mailgate.adapters.db.prepared import PreparedStatement, as_json, in_json, raw_sqlite
from mailgate.adapters.db.tables import (
    Message,
    Tenant,
    WebhookEndpoint,
    WebhookEvent,
    table_of,
)
from mailgate.domain.events import DeliveryState, EventType, new_event_id

_EVENTS = table_of(WebhookEvent)
_INSERT_EVENTS = _EVENTS.insert()
# Prepared once: it runs in every recording transaction of every worker (building the
# statement cost more than running it: 7 % of a worker's CPU in the benchmark).
_SUBSCRIBERS = select(WebhookEndpoint.id, WebhookEndpoint.tenant_id, WebhookEndpoint.events).where(
    WebhookEndpoint.tenant_id.in_(bindparam("tenants", expanding=True)),
    WebhookEndpoint.enabled.is_(True),
)


@dataclass(frozen=True)
class MessageEvent:
    """An event about one message: its type and, for an attempt, what the attempt did."""

    message_id: str
    type: EventType
    attempt: Mapping[str, Any] | None = None
    tenant_id: int | None = None
    """The message's tenant if the caller knows it: then a tenant without webhooks costs
    one indexed query on ``webhook_endpoints``, not a read of the messages."""


# The same on SQLite's DBAPI connection (adapters/db/journal_sqlite.py says why): the
# tenants as one JSON parameter.
_SUBSCRIBERS_SQLITE = PreparedStatement(
    select(WebhookEndpoint.id, WebhookEndpoint.tenant_id, WebhookEndpoint.events).where(
        in_json(WebhookEndpoint.tenant_id, "tenants"),
        WebhookEndpoint.enabled.is_(True),
    )
)


def _subscribers(conn: Connection, tenant_ids: set[int]) -> dict[int, list[tuple[str, set[str]]]]:
    rows: Sequence[Any]
    if raw_sqlite(conn):
        rows = _SUBSCRIBERS_SQLITE.rows(conn, {"tenants": as_json(sorted(tenant_ids))})
    else:
        rows = conn.execute(_SUBSCRIBERS, {"tenants": sorted(tenant_ids)}).all()
    out: dict[int, list[tuple[str, set[str]]]] = {}
    for endpoint_id, tenant_id, events in rows:
        out.setdefault(tenant_id, []).append((endpoint_id, set(events or ())))
    return out


def _body(event_type: str, now: datetime, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": event_type,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": dict(data),
    }


def _rows(
    endpoints: Sequence[tuple[str, set[str]]],
    tenant_id: int,
    event_type: str,
    body: dict[str, Any],
    message_id: str | None,
    now: datetime,
    only_endpoint: str | None = None,
) -> list[dict[str, Any]]:
    event_id = new_event_id()
    return [
        {
            "event_id": event_id,
            "endpoint_id": endpoint_id,
            "tenant_id": tenant_id,
            "type": event_type,
            "message_id": message_id,
            "payload": body,
            "created_at": now,
            "status": DeliveryState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "locked_by": None,
            "last_error": None,
        }
        for endpoint_id, wanted in endpoints
        if (only_endpoint is not None and endpoint_id == only_endpoint)
        or (only_endpoint is None and event_type in wanted)
    ]


def emit(
    conn: Connection,
    tenant_id: int,
    event_type: EventType,
    data: Mapping[str, Any],
    *,
    now: datetime,
    message_id: str | None = None,
) -> int:
    """Queue ``event_type`` with ``data`` for every enabled endpoint of the tenant that
    subscribed to it, in ``conn``'s transaction; returns the number of rows written.
    ``data`` is JSON-serialisable; ``tenant`` (the tenant's name) is added to it."""
    endpoints = _subscribers(conn, {tenant_id}).get(tenant_id, [])
    if not any(event_type.value in wanted for _id, wanted in endpoints):
        return 0
    name = conn.execute(select(Tenant.name).where(Tenant.id == tenant_id)).scalar_one()
    body = _body(event_type.value, now, {**data, "tenant": name})
    rows = _rows(endpoints, tenant_id, event_type.value, body, message_id, now)
    conn.execute(_INSERT_EVENTS, rows)
    return len(rows)


def emit_test(
    conn: Connection,
    tenant_id: int,
    tenant: str,
    endpoint_id: str,
    *,
    now: datetime,
    holder: str,
    hold_until: datetime,
) -> int:
    """A ``webhook.test`` event for one endpoint (enabled or not), held by ``holder`` until
    ``hold_until`` (the API sends it at once; a dispatcher takes it only if that fails to
    finish); returns its row's id."""
    body = _body(EventType.WEBHOOK_TEST.value, now, {"tenant": tenant, "webhook": endpoint_id})
    (row,) = _rows([(endpoint_id, set())], tenant_id, body["type"], body, None, now, endpoint_id)
    row.update(locked_by=holder, next_attempt_at=hold_until)
    return int(conn.execute(_EVENTS.insert().returning(_EVENTS.c.id), row).scalar_one())


def emit_for_messages(conn: Connection, events: Sequence[MessageEvent], *, now: datetime) -> int:
    """Queue events about messages (in this order, which is their delivery order per
    message), each with the message's data as it is in this transaction; messages of
    tenants without a subscribed endpoint are not even read."""
    if not events:
        return 0
    if all(e.tenant_id is not None for e in events):
        tenants = {e.message_id: int(e.tenant_id) for e in events if e.tenant_id is not None}
    else:
        ids = sorted({e.message_id for e in events})
        tenants = {
            mid: tid
            for mid, tid in conn.execute(
                select(Message.id, Message.tenant_id).where(Message.id.in_(ids))
            ).all()
        }
    subscribers = _subscribers(conn, set(tenants.values())) if tenants else {}
    wanted = [
        e
        for e in events
        if e.message_id in tenants
        and any(e.type.value in w for _id, w in subscribers.get(tenants[e.message_id], []))
    ]
    if not wanted:
        return 0
    info = {
        r.id: r
        for r in conn.execute(
            select(
                Message.id,
                Message.tenant_id,
                Tenant.name.label("tenant"),
                Message.server_name,
                Message.status,
                Message.rcpt_to,
                Message.subject,
                Message.meta,
            )
            .join(Tenant, Tenant.id == Message.tenant_id)
            .where(Message.id.in_(sorted({e.message_id for e in wanted})))
        ).all()
    }
    rows: list[dict[str, Any]] = []
    for e in wanted:
        m = info[e.message_id]
        data = {
            "id": m.id,
            "tenant": m.tenant,
            "server": m.server_name,
            "status": e.type.value.removeprefix("message."),
            "to": m.rcpt_to,
            "subject": m.subject,
            "metadata": m.meta or {},
            "attempt": dict(e.attempt) if e.attempt is not None else None,
        }
        body = _body(e.type.value, now, data)
        rows += _rows(subscribers[m.tenant_id], m.tenant_id, e.type.value, body, m.id, now)
    conn.execute(_INSERT_EVENTS, rows)
    return len(rows)
