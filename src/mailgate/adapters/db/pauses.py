"""Configuration pauses in the database, so that every worker process honours them.

A result carrying a ``PauseSignal`` (``domain/pauses.py``) pauses its configuration in the
transaction that records it (``record_pauses``): ``server_delivery.paused_until`` is set,
and the configuration's waiting mail is moved to that time, so that no claim, in any
process, takes it and idle workers do not wake up for it. When the time has come, the next
claim takes exactly one message of the configuration as its probe (``claim_probes``) and
nothing else of it while the probe is out; the probe's result either ends the pause (any
answer that is not a pause) or starts the next, longer one. ``resume`` ends a pause now.

Every function runs inside the caller's short transaction; none does network I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mailgate.adapters.db.events import emit
from mailgate.adapters.db.tables import (
    EmailServer,
    Membership,
    Message,
    OAuth2Notice,
    ServerDelivery,
    User,
    table_of,
)
from mailgate.domain.access import Role
from mailgate.domain.delivery import Claimed
from mailgate.domain.events import EventType
from mailgate.domain.messages import AttemptResult, Status, describe
from mailgate.domain.pauses import PausePolicy, PauseSignal, describe_pause

_STATE = table_of(ServerDelivery)
NOTICE_PAUSED = "paused"
"""``oauth2_notices.kind`` of a pause notice (``services/oauth2/alerts.py`` sends them)."""
_WAITING = (Status.QUEUED.value, Status.SCHEDULED.value, Status.DEFERRED.value)
_READY = (*_WAITING, Status.SENDING.value)


@dataclass(frozen=True)
class PauseGate:
    """What a claim must respect right now."""

    skip: frozenset[int]
    """Configurations none of whose mail is claimed (paused, or their probe is out)."""
    probe_due: tuple[int, ...]
    """Paused configurations whose time has come: one message of each may be claimed."""
    wake_at: datetime | None = None
    """When the earliest pause ends or probe lease runs out (for an idle worker's sleep)."""
    waiting: dict[int, datetime] = field(default_factory=dict)
    """Configurations still within their pause, and when it ends."""


# Prepared once: every claim of every worker reads it.
_PAUSED = select(_STATE.c.server_id, _STATE.c.paused_until, _STATE.c.probe_until).where(
    _STATE.c.paused_until.is_not(None)
)


def pause_gate(conn: Connection, now: datetime) -> PauseGate:
    rows = conn.execute(_PAUSED).all()
    if not rows:
        return PauseGate(frozenset(), ())
    due: list[int] = []
    wake: list[datetime] = []
    waiting: dict[int, datetime] = {}
    for sid, paused_until, probe_out in rows:
        until, probe_until = _utc(paused_until), _aware(probe_out)
        if until > now:
            wake.append(until)
            waiting[sid] = until
        elif probe_until is not None and probe_until > now:
            wake.append(probe_until)
        else:
            due.append(sid)
    return PauseGate(
        frozenset(r[0] for r in rows), tuple(due), min(wake) if wake else None, waiting
    )


def hold_back_arrivals(conn: Connection, gate: PauseGate) -> None:
    """Move mail that arrived for paused configurations since they paused to the end of
    their pause, as the pause did with the mail waiting then: claims then do not pass over
    it on every turn."""
    for sid, until in gate.waiting.items():
        _hold_back(conn, sid, until)


def claim_probes(
    conn: Connection,
    servers: Sequence[int],
    now: datetime,
    lease_until: datetime,
) -> list[str]:
    """Pick one ready message of each configuration whose pause is over, and mark it as the
    configuration's probe until ``lease_until``. The caller claims the returned ids."""
    ids: list[str] = []
    for sid in servers:
        mid = conn.execute(
            select(Message.id)
            .where(
                Message.server_id == sid,
                Message.status.in_(_READY),
                Message.next_attempt_at <= now,
            )
            .order_by(Message.priority, Message.next_attempt_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).scalar()
        if mid is None:
            continue  # nothing waits: the next message to arrive is the probe
        won = conn.execute(
            update(_STATE)
            .where(
                _STATE.c.server_id == sid,
                _STATE.c.paused_until <= now,
                or_(_STATE.c.probe_until.is_(None), _STATE.c.probe_until <= now),
            )
            .values(probe_until=lease_until, probe_message_id=mid)
        ).rowcount
        if won:
            ids.append(mid)
    return ids


@dataclass(frozen=True)
class NewPause:
    """A configuration that has just begun a pause (for notices and events)."""

    server_id: int
    until: datetime
    kind: str
    reason: str
    last_reply: str


def record_pauses(
    conn: Connection,
    items: Sequence[tuple[Claimed, AttemptResult]],
    now: datetime,
    policy: PausePolicy,
) -> list[NewPause]:
    """Apply the pause signals of recorded results, and end pauses whose probe got an answer
    that is not one. Returns the pauses that began (not those merely extended by mail that
    was already in flight when the pause began)."""
    signals: dict[int, tuple[PauseSignal, str, bool]] = {}
    probes_through: list[tuple[int, str]] = []
    for claimed, result in items:
        sid = claimed.server_id
        if sid is None:
            continue
        if result.pause is not None:
            was_probe = claimed.probe or (sid in signals and signals[sid][2])
            signals[sid] = (result.pause, describe(result.code, result.text), was_probe)
        elif claimed.probe:
            probes_through.append((sid, claimed.id))
    for sid, mid in probes_through:
        if sid in signals:
            continue
        conn.execute(
            update(_STATE)
            .where(_STATE.c.server_id == sid, _STATE.c.probe_message_id == mid)
            .values(
                paused_until=None,
                paused_at=None,
                pause_kind=None,
                pause_reason=None,
                pauses=0,
                probe_until=None,
                probe_message_id=None,
            )
        )
    began: list[NewPause] = []
    for sid, (signal, reply, was_probe) in signals.items():
        row = conn.execute(
            select(_STATE.c.paused_until, _STATE.c.pauses)
            .where(_STATE.c.server_id == sid)
            .with_for_update()
        ).first()
        current = _aware(row.paused_until) if row is not None else None
        pauses = row.pauses if row is not None else 0
        if current is not None and current > now and not was_probe:
            # Mail that was in flight when the pause began: the pause stands (longer if
            # this answer asks for more), it does not begin again.
            until = max(current, now + policy.window(signal, max(pauses, 1)))
            conn.execute(
                update(_STATE)
                .where(_STATE.c.server_id == sid)
                .values(paused_until=until, last_reply=reply[:2000])
            )
        else:
            pauses += 1
            until = now + policy.window(signal, pauses)
            values = {
                "paused_until": until,
                "paused_at": now,
                "pause_kind": signal.kind.value,
                "pause_reason": describe_pause(signal),
                "last_reply": reply[:2000],
                "pauses": pauses,
                "probe_until": None,
                "probe_message_id": None,
            }
            _upsert(conn, sid, values)
            pause = NewPause(sid, until, signal.kind.value, describe_pause(signal), reply)
            began.append(pause)
            _tell(conn, pause, first=pauses == 1, now=now)
        _hold_back(conn, sid, until)
    return began


def _tell(conn: Connection, pause: NewPause, *, first: bool, now: datetime) -> None:
    """The ``server.paused`` webhook event of every pause, and - for the first of a series,
    so that a quota that lasts a day is one notice, not 24 - a notice to each admin of the
    tenant (sent by ``services/oauth2/alerts.py`` through the system e-mail server)."""
    server = conn.execute(
        select(EmailServer.tenant_id, EmailServer.name).where(EmailServer.id == pause.server_id)
    ).first()
    if server is None or server.tenant_id is None:
        return  # the system e-mail server: no tenant to tell
    emit(
        conn,
        server.tenant_id,
        EventType.SERVER_PAUSED,
        {
            "server": server.name,
            "paused_until": pause.until.isoformat().replace("+00:00", "Z"),
            "kind": pause.kind,
            "reason": pause.reason,
            "last_reply": pause.last_reply[:2000],
        },
        now=now,
    )
    if not first:
        return
    conn.execute(
        delete(OAuth2Notice).where(
            OAuth2Notice.server_id == pause.server_id, OAuth2Notice.kind == NOTICE_PAUSED
        )
    )
    admins = conn.execute(
        select(User.email)
        .join(Membership, Membership.user_id == User.id)
        .where(
            Membership.tenant_id == server.tenant_id,
            Membership.role == Role.ADMIN.value,
            User.email.is_not(None),
        )
        .order_by(User.username)
    ).scalars()
    reason = f"{pause.reason}: {pause.last_reply}"[:2000]
    rows = [
        {
            "server_id": pause.server_id,
            "recipient": str(address),
            "reason": reason,
            "created_at": now,
            "next_try_at": now,
            "attempts": 0,
            "kind": NOTICE_PAUSED,
        }
        for address in admins
    ]
    if rows:
        conn.execute(insert(OAuth2Notice), rows)


def resume(conn: Connection, server_id: int, now: datetime) -> bool:
    """End a configuration's pause now and make its held-back mail due; ``False`` if it was
    not paused."""
    row = conn.execute(
        select(_STATE.c.paused_until).where(_STATE.c.server_id == server_id).with_for_update()
    ).first()
    if row is None or row.paused_until is None:
        return False
    until = _aware(row.paused_until)
    conn.execute(
        update(_STATE)
        .where(_STATE.c.server_id == server_id)
        .values(
            paused_until=None,
            paused_at=None,
            pause_kind=None,
            pause_reason=None,
            pauses=0,
            probe_until=None,
            probe_message_id=None,
        )
    )
    conn.execute(
        update(Message)
        .where(
            Message.server_id == server_id,
            Message.status.in_(_WAITING),
            Message.next_attempt_at > now,
            Message.next_attempt_at <= until,
        )
        .values(next_attempt_at=now)
    )
    return True


def _hold_back(conn: Connection, server_id: int, until: datetime) -> None:
    # Waiting mail of a paused configuration leaves the ready scan (claims do not walk past
    # it, idle workers do not wake up for it) until the pause ends.
    conn.execute(
        update(Message)
        .where(
            Message.server_id == server_id,
            Message.status.in_(_WAITING),
            Message.next_attempt_at < until,
        )
        .values(next_attempt_at=until)
    )


def _upsert(conn: Connection, server_id: int, values: dict[str, Any]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(_STATE).values(server_id=server_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["server_id"], set_=values))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)
