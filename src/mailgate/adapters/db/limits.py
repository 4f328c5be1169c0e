"""A configuration's limits held across every worker process (``ports.DeliveryLimits``),
coordinated through the database on SQLite and PostgreSQL.

- ``messages_per_minute``: one "next send" time per configuration (``server_delivery.
  next_send_at``, the generic cell rate algorithm): a reservation takes the slot at
  ``max(now, next_send_at)`` and moves it on by 60/rate seconds. Every process reserves from
  the same row, so the rate holds for the installation, not per process.
- ``recipients_per_day``: recipients counted per configuration and hour
  (``server_recipient_counts``); a message fits when the hours of the last 24 (counted
  generously: an hour is forgotten only 25 hours after it began) plus its recipients stay
  within the limit. One that does not fit waits until enough hours have aged out. Recipients
  count when their message is handed to a session (a later temporary failure does not give
  them back: never above the limit, sometimes a little below).
- ``max_connections``: numbered slots per configuration (``server_connections``), each
  leased to a worker while its session is open, renewed by the worker's heartbeat, released
  when the session closes, and free again after the lease if the worker died.

Each call is one short transaction that first locks the configuration's ``server_delivery``
row (created on first use), so concurrent processes queue on that row, never on each other's
network I/O: the transaction ends before any mail is sent.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mailgate.adapters.db.tables import (
    ServerConnection,
    ServerDelivery,
    ServerRecipientCount,
    table_of,
)
from mailgate.domain.clock import Clock
from mailgate.domain.delivery import SendSlot, per_day_reason

_STATE = table_of(ServerDelivery)
_SLOTS = table_of(ServerConnection)
_COUNTS = table_of(ServerRecipientCount)
_HOUR = timedelta(hours=1)
_WINDOW = timedelta(hours=25)
"""An hour's count is forgotten this long after the hour began (24 hours after its last
minute)."""


class SqlDeliveryLimits:
    def __init__(self, engine: Engine, clock: Clock, lease: timedelta) -> None:
        self.engine = engine
        self.clock = clock
        self.lease = lease

    def reserve(
        self,
        server_id: int,
        spacing_s: float,
        per_day: int | None,
        recipients: Sequence[int],
        max_wait_s: float,
    ) -> list[SendSlot]:
        now = self.clock()
        hour = now.replace(minute=0, second=0, microsecond=0)
        out: list[SendSlot] = []
        with self.engine.begin() as conn:
            next_send = _lock(conn, server_id)
            # No rate limit (any more): the slot is now, whatever an earlier rate left.
            tat = max(now, next_send) if next_send is not None and spacing_s else now
            counts: list[tuple[datetime, int]] = []
            used = 0
            if per_day is not None:
                counts = [
                    (_utc(h), int(n))
                    for h, n in conn.execute(
                        select(_COUNTS.c.hour, _COUNTS.c.recipients).where(
                            _COUNTS.c.server_id == server_id, _COUNTS.c.hour > now - _WINDOW
                        )
                    )
                ]
                used = sum(n for _h, n in counts)
            added = 0
            for n in recipients:
                if (tat - now).total_seconds() > max_wait_s:
                    out.append(SendSlot(tat, False))
                    continue
                if per_day is not None and used + n > per_day and used > 0:
                    until = _frees_at(counts, used, n, per_day, now)
                    out.append(SendSlot(until, False, per_day_reason(per_day, until)))
                    continue
                out.append(SendSlot(tat, True))
                tat += timedelta(seconds=spacing_s)
                if per_day is not None:
                    used += n
                    added += n
            if spacing_s:
                conn.execute(
                    update(_STATE).where(_STATE.c.server_id == server_id).values(next_send_at=tat)
                )
            if added:
                _add(conn, server_id, hour, added)
                # Hours that no longer count are dropped as they age out.
                conn.execute(
                    delete(_COUNTS).where(
                        _COUNTS.c.server_id == server_id, _COUNTS.c.hour <= now - _WINDOW
                    )
                )
        return out

    def acquire_connection(self, server_id: int, limit: int, holder: str) -> int | None:
        now = self.clock()
        with self.engine.begin() as conn:
            _lock(conn, server_id)
            taken = set(
                conn.execute(
                    select(_SLOTS.c.slot).where(
                        _SLOTS.c.server_id == server_id, _SLOTS.c.expires_at > now
                    )
                ).scalars()
            )
            free = next((i for i in range(limit) if i not in taken), None)
            if free is None:
                return None
            conn.execute(
                delete(_SLOTS).where(_SLOTS.c.server_id == server_id, _SLOTS.c.slot == free)
            )
            conn.execute(
                _SLOTS.insert().values(
                    server_id=server_id, slot=free, holder=holder, expires_at=now + self.lease
                )
            )
        return free

    def renew_connections(self, holder: str, held: Collection[tuple[int, int]]) -> None:
        if not held:
            return
        until = self.clock() + self.lease
        with self.engine.begin() as conn:
            conn.execute(
                update(_SLOTS)
                .where(
                    _SLOTS.c.holder == holder,
                    or_(*(and_(_SLOTS.c.server_id == s, _SLOTS.c.slot == n) for s, n in held)),
                )
                .values(expires_at=until)
            )

    def release_connection(self, server_id: int, slot: int, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(_SLOTS).where(
                    _SLOTS.c.server_id == server_id,
                    _SLOTS.c.slot == slot,
                    _SLOTS.c.holder == holder,
                )
            )

    def connections_held(self, server_id: int) -> int:
        """Connection slots held right now (for tests and operators)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(_SLOTS)
                    .where(_SLOTS.c.server_id == server_id, _SLOTS.c.expires_at > self.clock())
                ).scalar_one()
            )


def _lock(conn: Connection, server_id: int) -> datetime | None:
    """Lock the configuration's ``server_delivery`` row (creating it), so that processes
    reserving for the same configuration take turns; returns its ``next_send_at``."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(_STATE)
        .values(server_id=server_id, pauses=0)
        .on_conflict_do_nothing(index_elements=["server_id"])
    )
    value = conn.execute(
        select(_STATE.c.next_send_at).where(_STATE.c.server_id == server_id).with_for_update()
    ).scalar()
    return None if value is None else _utc(value)


def _add(conn: Connection, server_id: int, hour: datetime, n: int) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(_COUNTS).values(server_id=server_id, hour=hour, recipients=n)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["server_id", "hour"],
            set_={"recipients": _COUNTS.c.recipients + n},
        )
    )


def _frees_at(
    counts: Sequence[tuple[datetime, int]], used: int, n: int, per_day: int, now: datetime
) -> datetime:
    left = used
    for hour, count in sorted(counts):
        left -= count
        if left + n <= per_day:
            return hour + _WINDOW
    return now + _WINDOW


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
