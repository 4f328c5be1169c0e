"""The outbox as a queue (``ports.DeliveryQueue``): claim ready messages with a lease, record
what an attempt did.

Claiming is ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so many workers on many
machines never take the same row; on SQLite every write transaction is ``BEGIN IMMEDIATE``
(see ``adapters/db/engine.py``), which serialises claims. A claim sets ``locked_until`` and
``next_attempt_at`` to the lease's end: if the worker dies, the row becomes claimable again
then, and the next worker delivers it (at-least-once; the attempt log shows a repeat).

Database work is batched: one transaction claims up to a batch, one records many results.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db import journal_sqlite, processes
from mailgate.adapters.db.engine import READ_ONLY, discard, loop_writer
from mailgate.adapters.db.events import MessageEvent, emit_for_messages
from mailgate.adapters.db.notify import mark_ready
from mailgate.adapters.db.pauses import (
    claim_probes,
    hold_back_arrivals,
    pause_gate,
    record_pauses,
)
from mailgate.adapters.db.prepared import PreparedStatement, as_json, in_json, raw_sqlite
from mailgate.adapters.db.tables import (
    Message,
    MessageAttempt,
    MessageContent,
    ServerConnection,
    table_of,
)
from mailgate.domain.clock import Clock
from mailgate.domain.delivery import Claimed, Heartbeat, Journaled, Recorded
from mailgate.domain.events import EVENT_OF_STATUS
from mailgate.domain.messages import (
    AttemptResult,
    Decision,
    Outcome,
    RetryPolicy,
    Status,
    decide,
    deciding_reply,
    describe,
)
from mailgate.domain.pauses import PausePolicy

# How often a claim moves mail that arrived for a paused configuration to its pause's end.
HOLD_BACK_EVERY_S = 5.0
_FRESH = (Status.QUEUED.value, Status.SCHEDULED.value)
_AGAIN = (Status.DEFERRED.value, Status.SENDING.value)
_READY = (*_FRESH, *_AGAIN)
_MESSAGES = table_of(Message)
_READY_OF_STATUS = (
    select(Message.priority, Message.next_attempt_at, Message.id, Message.server_id)
    .where(Message.status == bindparam("status"), Message.next_attempt_at <= bindparam("now"))
    .order_by(Message.priority, Message.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)


def _ready_of_each_status() -> Any:
    """``_READY_OF_STATUS`` for every ready status in one statement, each arm led by the
    index as before, each row with its status: on SQLite (which has no row locks to skip) a
    claim reads them in one execution instead of four."""
    arms = []
    for status in _READY:
        arm = select(
            Message.status, Message.priority, Message.next_attempt_at, Message.id, Message.server_id
        ).where(Message.status == status, Message.next_attempt_at <= bindparam("now"))
        arm = arm.order_by(Message.priority, Message.next_attempt_at).limit(bindparam("limit"))
        arms.append(select(arm.subquery()))
    return union_all(*arms)


_READY_ALL = _ready_of_each_status()
_READY_ALL_SQLITE = PreparedStatement(_READY_ALL)


# Beside full lanes, the ordered walk above would pass every ready row of the skipped
# configurations to find the others' (1,000,000 queued for one configuration: 73 % of the
# worker in that walk, bench/README.md). Instead, through ix_messages_server_ready (status,
# server_id, priority, next_attempt_at), a claim that skips configurations finds those with
# mail of a status by a loose index scan (one seek per configuration: the next server_id
# above the previous one), and takes each one's first ``per`` ready messages by a seek of
# its own; rows without a configuration (deleted) by one more. Its cost grows with the
# number of configurations with mail, not with the depth of anyone's backlog, and no
# configuration's mail is out of reach behind another's.
#
# PostgreSQL plans by its statistics: with one configuration's million rows it took the
# seek through ix_messages_ready (filtering server_id: the whole backlog, 290 ms), and the
# scan through ix_messages_server_id (filtering status). So its statements compare
# (status, server_id) as a row and order by both columns: only an index that leads with
# them serves that without sorting every row. (Equality on either would let the planner
# drop it from the order, and the other indexes would do again.)
_BELOW_ANY_SERVER = -(2**31)


def _configurations_with(status: Any, name: str, rows: bool) -> Any:
    """The ids of the configurations with messages of ``status``: a recursive CTE, the loose
    index scan. ``rows`` (PostgreSQL): step by ``(status, server_id) > (status, previous)``,
    from a seed below any id; the CTE's rows of ``status`` other than the seed are the
    configurations. Otherwise (SQLite) by ``MIN(server_id)`` above the previous; the last
    row is NULL."""
    step = _MESSAGES.alias(f"{name}_step")
    if rows:
        seed = select(
            cast(status, String(16)).label("status"),
            literal(_BELOW_ANY_SERVER, Integer).label("sid"),
        )
        found = seed.cte(name, recursive=True)
        key = tuple_(step.c.status, step.c.server_id)
        after = (
            select(step.c.status, step.c.server_id)
            .where(key > tuple_(found.c.status, found.c.sid))
            .order_by(step.c.status, step.c.server_id)
            .limit(1)
            .lateral(f"{name}_next")
        )
        more = select(after.c.status, after.c.server_id).select_from(found.join(after, true()))
        return found.union_all(more.where(found.c.status == status))
    first = _MESSAGES.alias(f"{name}_first")
    lowest = select(func.min(first.c.server_id)).where(first.c.status == status)
    found = select(lowest.scalar_subquery().label("sid")).cte(name, recursive=True)
    above = select(func.min(step.c.server_id)).where(
        step.c.status == status, step.c.server_id > found.c.sid
    )
    return found.union_all(select(above.scalar_subquery()).where(found.c.sid.is_not(None)))


def _first_of_each_configuration(status: Any, name: str, lock: bool) -> Any:
    """Ready messages of ``status`` (status, priority, due, id, server_id): of each
    configuration not in ``skip`` its first ``per`` in claim order, and up to ``limit``
    without a configuration; of those the first ``cut`` in claim order (a claim takes no
    more: ``limit``, and what ``_fit`` may drop for the lanes' room). ``lock``
    (PostgreSQL): each configuration's seek is a LATERAL subquery, and only what the ``cut``
    takes is locked, FOR UPDATE SKIP LOCKED, by a second seek per configuration for as many
    as it has there (mail without one by id, checked again as it is locked); SQLite,
    without LATERAL, joins each configuration to its messages through ``id IN (its
    seek)``."""
    found = _configurations_with(status, name, rows=lock)
    servers = found.c.sid.not_in(bindparam("skip", expanding=True))
    if lock:
        servers = and_(servers, found.c.status == status, found.c.sid != _BELOW_ANY_SERVER)
    taken = select(found.c.sid).where(servers).subquery(f"{name}_taken")
    seek, rows = _MESSAGES.alias(f"{name}_seek"), _MESSAGES.alias(f"{name}_rows")
    cols = [seek.c.status, seek.c.priority, seek.c.next_attempt_at, seek.c.id, seek.c.server_id]
    now = seek.c.next_attempt_at <= bindparam("now")
    order = seek.c.priority, seek.c.next_attempt_at
    if lock:
        key, here = tuple_(seek.c.status, seek.c.server_id), tuple_(status, taken.c.sid)
        each = (
            select(*cols)
            .where(key >= here, key <= here, now)
            .order_by(seek.c.status, seek.c.server_id, *order)
            .limit(bindparam("per"))
            .lateral(f"{name}_each")
        )
        of_servers = select(*each.c).select_from(taken.join(each, true()))
    else:
        ids = (
            select(seek.c.id)
            .where(seek.c.status == status, seek.c.server_id == taken.c.sid, now)
            .order_by(*order)
            .limit(bindparam("per"))
        )
        of_servers = select(
            rows.c.status, rows.c.priority, rows.c.next_attempt_at, rows.c.id, rows.c.server_id
        ).select_from(taken.join(rows, rows.c.id.in_(ids)))
    orphans = (
        select(*cols)
        .where(seek.c.status == status, seek.c.server_id.is_(None), now)
        .order_by(seek.c.server_id, *order)
        .limit(bindparam("limit"))
    )
    found_rows = union_all(of_servers, select(orphans.subquery(f"{name}_orphans")))
    candidates = found_rows.subquery(f"{name}_candidates")
    first = (
        select(*candidates.c)
        .order_by(candidates.c.priority, candidates.c.next_attempt_at)
        .limit(bindparam("cut"))
    )
    if not lock:
        return select(first.subquery(f"{name}_first"))
    # Locked: as many of each configuration as it has among the first ``cut``, by a second
    # seek that passes over rows other claims hold (and takes the next ones instead).
    best = first.cte(f"{name}_best")
    counts = (
        select(best.c.server_id, func.count().label("n"))
        .where(best.c.server_id.is_not(None))
        .group_by(best.c.server_id)
        .subquery(f"{name}_counts")
    )
    again = _MESSAGES.alias(f"{name}_again")
    mine = [
        again.c.status,
        again.c.priority,
        again.c.next_attempt_at,
        again.c.id,
        again.c.server_id,
    ]
    key, here = tuple_(again.c.status, again.c.server_id), tuple_(status, counts.c.server_id)
    locked = (
        select(*mine)
        .where(key >= here, key <= here, again.c.next_attempt_at <= bindparam("now"))
        .order_by(again.c.status, again.c.server_id, again.c.priority, again.c.next_attempt_at)
        .limit(counts.c.n)
        .with_for_update(skip_locked=True)
        .lateral(f"{name}_locked")
    )
    gone = select(best.c.id).where(best.c.server_id.is_(None)).subquery(f"{name}_gone")
    orphan = _MESSAGES.alias(f"{name}_orphan")
    locked_orphans = (
        select(orphan.c.status, orphan.c.priority, orphan.c.next_attempt_at, orphan.c.id)
        .add_columns(orphan.c.server_id)
        .where(
            orphan.c.id == gone.c.id,
            orphan.c.status == status,
            orphan.c.next_attempt_at <= bindparam("now"),
        )
        .with_for_update(skip_locked=True)
        .lateral(f"{name}_locked_orphans")
    )
    return union_all(
        select(*locked.c).select_from(counts.join(locked, true())),
        select(*locked_orphans.c).select_from(gone.join(locked_orphans, true())),
    )


# PostgreSQL: one statement per status (FOR UPDATE SKIP LOCKED on what it takes).
_READY_OF_STATUS_SKIP = _first_of_each_configuration(bindparam("status"), "ready", lock=True)
# SQLite: every status in one statement.
_READY_ALL_SKIP = union_all(
    *(_first_of_each_configuration(status, f"ready_{status}", lock=False) for status in _READY)
)
# The mail of a few configurations (the remote-output worker of an API process): led by the
# server_id index. "status || ''" keeps SQLite (which has no statistics) from walking every
# ready row of the status through ix_messages_ready to find the few of these servers.
_READY_OF_SERVERS = (
    select(Message.priority, Message.next_attempt_at, Message.id, Message.server_id)
    .where(
        Message.status.concat("") == bindparam("status"),
        Message.next_attempt_at <= bindparam("now"),
        Message.server_id.in_(bindparam("servers", expanding=True)),
    )
    .order_by(Message.priority, Message.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_TAKE_ANY = update(Message).values(
    status=bindparam("status"),
    locked_by=bindparam("worker"),
    locked_until=bindparam("until"),
    next_attempt_at=bindparam("until"),
    updated_at=bindparam("now"),
)
_TAKE = _TAKE_ANY.where(Message.id.in_(bindparam("ids", expanding=True)))
# What an attempt needs of a message (``Claimed``), for the claim and for settling.
_FOR_ATTEMPT = (
    Message.id,
    Message.tenant_id,
    Message.server_id,
    Message.server_name,
    Message.mail_from,
    Message.rcpt_to,
    Message.recipient_status,
    Message.attempt_count,
    Message.created_at,
    Message.expires_at,
)
_CLAIMED_ANY = select(*_FOR_ATTEMPT, MessageContent.raw).join(
    MessageContent, MessageContent.message_id == Message.id
)
_CLAIMED = _CLAIMED_ANY.where(Message.id.in_(bindparam("ids", expanding=True)))
# The same two on SQLite's DBAPI connection (adapters/db/journal_sqlite.py): ids as JSON.
_TAKE_SQLITE = PreparedStatement(_TAKE_ANY.where(in_json(Message.id)))
_CLAIMED_SQLITE = PreparedStatement(_CLAIMED_ANY.where(in_json(Message.id)))
# SQLite's claim takes what it read before it held the write lock (``_claim_sqlite``): of
# those, what is still ready and not an unfinished attempt (another worker may have taken
# or started it meanwhile).
_STILL_READY = (
    # No expanding IN (prepared); "status || ''" keeps SQLite from walking the status
    # index through every ready row instead of looking up the few ids.
    or_(*(Message.status.concat("") == status for status in _READY)),
    Message.next_attempt_at <= bindparam("now"),
    Message.attempt_started_at.is_(None),
)
_TAKE_READY = _TAKE_ANY.where(Message.id.in_(bindparam("ids", expanding=True)), *_STILL_READY)
_TAKE_READY = _TAKE_READY.returning(Message.id)
_TAKE_READY_SQLITE = PreparedStatement(
    _TAKE_ANY.where(in_json(Message.id), *_STILL_READY).returning(Message.id)
)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


_ATTEMPTS = table_of(MessageAttempt)
_INSERT_ATTEMPTS = _ATTEMPTS.insert()
_RECORD = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("b_id"), _MESSAGES.c.locked_by == bindparam("b_worker"))
    .values(
        status=bindparam("status"),
        next_attempt_at=bindparam("next_attempt_at"),
        last_error=bindparam("last_error"),
        attempt_count=bindparam("attempt_count"),
        locked_by=bindparam("locked_by"),
        locked_until=bindparam("locked_until"),
        updated_at=bindparam("updated_at"),
        recipient_status=bindparam("recipient_status"),
        attempt_started_at=None,
    )
)
_RECORDING = journal_sqlite.Recording(_RECORD)
_START = (
    update(Message)
    .where(
        Message.id.in_(bindparam("ids", expanding=True)),
        Message.locked_by == bindparam("worker"),
        Message.status == Status.SENDING.value,
    )
    .values(attempt_started_at=bindparam("now"))
    .returning(Message.id)
)
# Messages whose attempt was started and never finished (the worker died, or lost the lease
# in the middle of it): ready again, but possibly delivered already.
_UNFINISHED = select(*_FOR_ATTEMPT, Message.locked_by).where(
    Message.status == Status.SENDING.value, Message.attempt_started_at.is_not(None)
)
# PostgreSQL: two workers settling at once (two claims, two heartbeats) take different rows.
_UNFINISHED = _UNFINISHED.with_for_update(skip_locked=True)
# Prepared once (every claim runs the first): a statement built per call with its values
# inlined cost a third of a claim's CPU (SQLAlchemy adapts the cached form to each new one).
_UNFINISHED_DUE = _UNFINISHED.where(Message.next_attempt_at <= bindparam("now"))
_UNFINISHED_OF = _UNFINISHED.where(Message.locked_by == bindparam("worker"))
_UNFINISHED_DUE_SQLITE = PreparedStatement(_UNFINISHED_DUE)


_Ready = tuple[int, datetime | None, str, int | None]
"""A ready row: priority, due, id, configuration."""


def _by_turn(groups: Iterable[list[_Ready]]) -> list[_Ready]:
    """Several statuses' ready rows merged in claim order (priority, then due)."""
    rows = [row for group in groups for row in group]
    rows.sort(key=lambda row: (row[0], row[1] or _EARLIEST))
    return rows


def _fit(rows: list[_Ready], room: dict[int, int], per_server: int | None) -> list[str]:
    """Ids of ``rows`` with at most ``room`` (default ``per_server``) of each configuration:
    one configuration's backlog cannot fill a claim (README "Provider limits, pauses and
    fairness")."""
    if per_server is None:
        return [row[2] for row in rows]
    out: list[str] = []
    for _p, _t, mid, sid in rows:
        if sid is not None:
            left = room.get(sid, per_server)
            if left <= 0:
                continue
            room[sid] = left - 1
        out.append(mid)
    return out


@dataclass
class _AttemptRows:
    items: list[tuple[Claimed, AttemptResult]]
    updates: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    events: list[MessageEvent] = field(default_factory=list)
    recorded: list[Recorded] = field(default_factory=list)


_ATTEMPT_OUTCOME = {Status.SENT: "delivered", Status.DEFERRED: "deferred", Status.FAILED: "failed"}


class SqlDeliveryQueue:
    """``ports.DeliveryQueue`` on SQLite or PostgreSQL."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Clock,
        lease: timedelta,
        policy: RetryPolicy,
        rand: Callable[[], float] = random.random,
        pauses: PausePolicy | None = None,
    ) -> None:
        self.sessions = sessions
        self.pauses = pauses or PausePolicy()
        self._held_back_at = -HOLD_BACK_EVERY_S
        self.engine: Engine = sessions.kw["bind"]
        self._inline: Connection | None = None
        self.one_read = self.engine.dialect.name == "sqlite"
        """Claims read the ready rows of all statuses in one statement (SQLite: no row
        locks; PostgreSQL's FOR UPDATE SKIP LOCKED cannot lock through a UNION)."""
        self.clock = clock
        self.lease = lease
        self.policy = policy
        self.rand = rand
        self.on_settled: Callable[[list[Recorded]], None] = lambda _recorded: None
        """Hears the attempts a claim closed for dead workers (possibly delivered)."""

    def claim(
        self,
        worker_id: str,
        limit: int,
        skip_servers: Collection[int] = (),
        only_servers: Collection[int] | None = None,
        per_server: int | None = None,
        held: Mapping[int, int] | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` ready messages: fresh mail first by priority, but a quarter of
        the batch is kept for retries so that neither starves the other. Mail of
        ``skip_servers`` is left to other processes (remote output, see ``RemoteClients``),
        or to later (the worker's lane of it is full); with ``only_servers`` nothing but
        their mail is taken. ``per_server``: at most this many of one configuration, less
        the ``held`` ones the worker's lane of it has already (fairness).

        Prepared column statements on a plain connection: a worker fed by a steady stream
        claims a few messages at a time, so the fixed cost of a claim counts.
        """
        now = self.clock()
        skip = list(skip_servers)
        only = None if only_servers is None else list(only_servers)
        if only == []:
            return []
        if self.one_read:
            found = self._claim_sqlite(worker_id, limit, skip, only, per_server, held, now)
            # None: an unfinished attempt to close or a paused configuration. Nothing taken
            # of what was read: other workers took all of it meanwhile; the claim below
            # reads again under the lock (not "nothing ready": the worker would sleep).
            if found is not None and (found[0] or not found[1]):
                return found[0]
        with self.engine.begin() as conn:
            # First the attempts a dead worker left open: recorded as possibly delivered
            # and retried late, not sent again now.
            self._settle_unfinished(conn, now)
            # Paused configurations (adapters/db/pauses.py): none of their mail, but one
            # probe of each whose pause is over.
            gate = pause_gate(conn, now)
            if gate.waiting and time.monotonic() - self._held_back_at >= HOLD_BACK_EVERY_S:
                hold_back_arrivals(conn, gate)
                self._held_back_at = time.monotonic()
            until = now + self.lease
            probes: list[str] = []
            if gate.skip:
                due = [
                    sid
                    for sid in gate.probe_due
                    if sid not in skip and (only is None or sid in only)
                ]
                probes = claim_probes(conn, due, now, until)
                if only is not None:
                    only = [sid for sid in only if sid not in gate.skip]
                else:
                    skip = [*skip, *gate.skip]
                limit -= len(probes)
            ids = probes + self._pick(conn, now, limit, skip, only, per_server, held)
            if not ids:
                return []
            take = {"status": Status.SENDING.value, "worker": worker_id, "until": until}
            take["now"] = now
            rows: Sequence[Any]
            if raw_sqlite(conn):
                _TAKE_SQLITE.rows(conn, {**take, "ids": as_json(ids)})
            else:
                conn.execute(_TAKE, {**take, "ids": ids})
            rows = _claimed_rows(conn, ids)
        return _claimed(rows, ids, probes)

    def _claim_sqlite(
        self,
        worker_id: str,
        limit: int,
        skip: list[int],
        only: list[int] | None,
        per_server: int | None,
        held: Mapping[int, int] | None,
        now: datetime,
    ) -> tuple[list[Claimed], int] | None:
        """SQLite's usual claim, holding the one write lock only for the update that takes
        the messages: what to take is read before (no lock), the messages' content after
        (they are this worker's then). The whole claim in one write transaction held the
        lock 5.6 ms on average in a thread that waits for the GIL between statements, and
        every submission's commit waited for it (bench/README.md). What another worker took
        or started in between is not taken (``_STILL_READY``); the claimed messages and
        the number of candidates read. ``None``: an attempt a dead worker left unfinished
        must be closed, or a configuration is paused (probes, holding back): the claim in
        one transaction (``claim``) does those."""
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            if _unfinished_due(conn, now) or pause_gate(conn, now).skip:
                return None
            ids = self._pick(conn, now, limit, skip, only, per_server, held)
        if not ids:
            return [], 0
        take = {"status": Status.SENDING.value, "worker": worker_id, "until": now + self.lease}
        take["now"] = now
        with self.engine.begin() as conn:
            if raw_sqlite(conn):
                taken = [r[0] for r in _TAKE_READY_SQLITE.rows(conn, {**take, "ids": as_json(ids)})]
            else:
                taken = list(conn.scalars(_TAKE_READY, {**take, "ids": ids}))
        if not taken:
            return [], len(ids)
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            rows = _claimed_rows(conn, taken)
        return _claimed(rows, ids, []), len(ids)

    def _pick(
        self,
        conn: Connection,
        now: datetime,
        limit: int,
        skip: list[int],
        only: list[int] | None,
        per_server: int | None,
        held: Mapping[int, int] | None,
    ) -> list[str]:
        """Which ready messages a claim takes, in claim order (see ``claim``)."""
        # Beside skipped configurations, each other one's first ``per``: its share of
        # the claim (``_fit``) needs no more; and of those, ``limit`` and what ``_fit``
        # may drop (at most what the lanes hold).
        per, cut = limit, limit
        if per_server:
            per = min(limit, per_server)
            cut += sum(n for sid, n in (held or {}).items() if sid not in skip)
        if only is None and self.one_read:
            ready = self._ready_all(conn, now, limit, skip, per, cut)
        else:
            if skip and only is None:
                # The locking seek's LIMIT is a count of the first seek's rows: the
                # planner cannot know it, assumes a tenth of the table, and JIT-compiled
                # the statement for that (365 ms of 365 with 1,000,000 queued).
                conn.exec_driver_sql("SET LOCAL jit = off")
            ready = {s: self._ready(conn, s, now, limit, skip, per, cut, only) for s in _READY}
        room = {sid: per_server - n for sid, n in (held or {}).items()} if per_server else {}
        fresh = _fit(_by_turn(ready[s] for s in _FRESH), room, per_server)
        again = _fit(_by_turn(ready[s] for s in _AGAIN), room, per_server)
        retry_share = max(1, limit // 4)
        take_again = min(len(again), max(retry_share, limit - len(fresh)))
        return fresh[: limit - take_again] + again[:take_again]

    @staticmethod
    def _ready(
        conn: Connection,
        status: str,
        now: datetime,
        limit: int,
        skip: Sequence[int],
        per: int,
        cut: int,
        only: Sequence[int] | None = None,
    ) -> list[_Ready]:
        """Up to ``limit`` claimable messages of one status, in claim order; with ``skip``,
        the first ``cut`` of up to ``per`` of each configuration not skipped (and ``limit``
        without one).

        One query per status: with ``status IN (...)`` the database must sort every ready
        row on each claim; with one status the (status, priority, next_attempt_at) index
        gives the rows in order and the scan stops at the limit (SQLite: 12-16 ms -> 0.2 ms
        per claim with 50,000 queued, migration 0003)."""
        if only is not None:
            params = {"status": status, "now": now, "limit": limit, "servers": list(only)}
            return [(p, t, i, s) for p, t, i, s in conn.execute(_READY_OF_SERVERS, params)]
        if skip:
            params = {"status": status, "now": now, "limit": limit, "per": per, "cut": cut}
            params["skip"] = skip
            return [(p, t, i, s) for _s, p, t, i, s in conn.execute(_READY_OF_STATUS_SKIP, params)]
        rows = conn.execute(_READY_OF_STATUS, {"status": status, "now": now, "limit": limit})
        return [(p, t, i, s) for p, t, i, s in rows]

    @staticmethod
    def _ready_all(
        conn: Connection, now: datetime, limit: int, skip: Sequence[int], per: int, cut: int
    ) -> dict[str, list[_Ready]]:
        """``_ready`` of every ready status, in one statement (SQLite)."""
        ready: dict[str, list[_Ready]] = {status: [] for status in _READY}
        rows: Iterable[Any]
        if skip:
            params = {"now": now, "limit": limit, "per": per, "cut": cut, "skip": list(skip)}
            rows = conn.execute(_READY_ALL_SKIP, params)
        elif raw_sqlite(conn):
            rows = _READY_ALL_SQLITE.rows(conn, {"now": now, "limit": limit})
        else:
            rows = conn.execute(_READY_ALL, {"now": now, "limit": limit})
        for status, p, t, i, sid in rows:
            ready[status].append((p, t, i, sid))
        return ready

    def record(
        self, worker_id: str, items: Sequence[tuple[Claimed, AttemptResult]]
    ) -> list[Recorded]:
        """Store the attempts and the next state of each message, in one transaction."""
        return self.journal(worker_id, (), items).recorded

    def journal(
        self,
        worker_id: str,
        start: Sequence[str],
        items: Sequence[tuple[Claimed, AttemptResult]],
    ) -> Journaled:
        """One transaction for what a worker's sessions did since the last one: mark the
        attempts of ``start`` as started (they are about to go out; see ``Journaled`` for
        the ones that must not) and record the finished attempts of ``items``."""
        now = self.clock()
        rows = self._attempt_rows(items, now, lambda _m: worker_id)
        with self.engine.begin() as conn:
            return self._journal_in(conn, worker_id, start, rows, now)

    def journal_if_free(
        self,
        worker_id: str,
        start: Sequence[str],
        items: Sequence[tuple[Claimed, AttemptResult]],
    ) -> Journaled | None:
        """``journal`` for the event loop (SQLite): on a connection kept for it, which
        neither waits for the write lock nor checkpoints on commit (file I/O; other
        connections do); ``None``, with nothing written, while another writer holds the
        lock (then ``journal`` in a thread waits for it). The hand-off of each journal write
        to a thread and back cost more CPU than the write (see the service)."""
        now = self.clock()
        rows = self._attempt_rows(items, now, lambda _m: worker_id)
        try:
            conn = self._inline_connection()
            conn.begin()
        except Exception as exc:
            if "database is locked" in str(exc):
                return None
            self._drop_inline()
            raise
        try:
            done = self._journal_in(conn, worker_id, start, rows, now)
            conn.commit()
        except Exception:
            self._drop_inline()
            raise
        return done

    def _inline_connection(self) -> Connection:
        conn = self._inline
        if conn is None or conn.closed or conn.invalidated:
            conn = self._inline = loop_writer(self.engine)
        return conn

    def _drop_inline(self) -> None:
        conn, self._inline = self._inline, None
        discard(conn)

    def _journal_in(
        self,
        conn: Connection,
        worker_id: str,
        start: Sequence[str],
        rows: _AttemptRows,
        now: datetime,
    ) -> Journaled:
        started: frozenset[str] = frozenset()
        if start and raw_sqlite(conn):
            started = journal_sqlite.start(conn, start, worker_id, now)
        elif start:
            params = {"ids": list(start), "worker": worker_id, "now": now}
            started = frozenset(conn.scalars(_START, params))
        if rows.items:
            self._write_attempts(conn, rows, now)
        return Journaled(started, rows.recorded)

    def _attempt_rows(
        self,
        items: Sequence[tuple[Claimed, AttemptResult]],
        now: datetime,
        worker_of: Callable[[Claimed], str],
    ) -> _AttemptRows:
        """What recording ``items`` writes: decided by the retry policy, nothing written."""
        rows = _AttemptRows(list(items))
        for claimed, result in items:
            # A quota or throttling answer is about the account, not the message: it does
            # not count toward the message's backoff (domain/pauses.py).
            attempt_no = claimed.attempt_count + (0 if result.pause is not None else 1)
            pause_until = (
                now + self.pauses.window(result.pause, 1) if result.pause is not None else None
            )
            decision = decide(
                result,
                claimed.rcpt_to,
                max(attempt_no, 1),
                claimed.expires_at,
                now,
                self.policy,
                self.rand,
                pause_until=pause_until,
            )
            status = _merge_recipients(claimed.recipient_status, claimed, result, decision)
            code, text = deciding_reply(result, decision)
            worker = worker_of(claimed)
            rows.updates.append(
                {
                    "b_id": claimed.id,
                    "b_worker": worker,
                    "status": decision.status.value,
                    "next_attempt_at": decision.next_attempt_at,
                    "last_error": _last_error(decision, status),
                    "attempt_count": attempt_no,
                    "locked_by": None,
                    "locked_until": None,
                    "updated_at": now,
                    "recipient_status": status,
                }
            )
            rows.attempts.append(
                {
                    "message_id": claimed.id,
                    "at": now,
                    "outcome": _ATTEMPT_OUTCOME.get(decision.status, "deferred"),
                    "smtp_code": code,
                    "smtp_response": text[:2000],
                    "ms": result.ms,
                    "worker": worker,
                    "recipients": _recipients_view(result) if result.recipients else None,
                    "possibly_delivered": result.possibly_delivered,
                }
            )
            rows.recorded.append(Recorded(claimed, result, decision))
            event = EVENT_OF_STATUS.get(decision.status)
            if event is not None:
                rows.events.append(
                    MessageEvent(
                        claimed.id, event, _attempt_event(rows.attempts[-1]), claimed.tenant_id
                    )
                )
        return rows

    def _write_attempts(self, conn: Connection, rows: _AttemptRows, now: datetime) -> None:
        """The recording transaction's writes: each message's next state (only where the
        worker still holds it: a row whose lease was lost keeps the other worker's state,
        but the attempt is logged all the same, so a duplicate is visible), the attempt
        log, the webhook events, the pauses."""
        if raw_sqlite(conn):
            _RECORDING.record(conn, rows.updates, rows.attempts)
        else:
            conn.execute(_RECORD, rows.updates)
            conn.execute(_INSERT_ATTEMPTS, rows.attempts)
        # The webhook events of these attempts, committed with them (README "Webhooks").
        emit_for_messages(conn, rows.events, now=now)
        if any(result.pause is not None or claimed.probe for claimed, result in rows.items):
            record_pauses(conn, rows.items, now, self.pauses)

    def _settle_unfinished(
        self, conn: Connection, now: datetime, *, of_worker: str | None = None
    ) -> list[Recorded]:
        """Close the attempts that were marked started and never recorded: the worker died
        (or lost its lease) between the mark and the result, so the server may have the
        message. Each gets a possibly-delivered attempt in the log and is retried after
        ``RetryPolicy.possibly_delivered_after``, like a reply lost after the final dot.
        ``of_worker``: that worker's, whatever their lease (it stops); else those whose lease
        ran out."""
        if of_worker is None:
            found = _unfinished_due(conn, now)
        else:
            found = conn.execute(_UNFINISHED_OF, {"worker": of_worker}).all()
        if not found:
            return []
        items: list[tuple[Claimed, AttemptResult]] = []
        holder: dict[str, str] = {}
        for r in found:
            claimed = Claimed(
                id=r.id,
                tenant_id=r.tenant_id,
                server_id=r.server_id,
                server_name=r.server_name,
                mail_from=r.mail_from,
                rcpt_to=_pending(r.rcpt_to, r.recipient_status),
                raw=b"",
                attempt_count=r.attempt_count,
                created_at=r.created_at,
                expires_at=r.expires_at,
                recipient_status=r.recipient_status,
            )
            holder[r.id] = r.locked_by or ""
            text = (
                f"the attempt by worker {r.locked_by} never finished (the worker stopped or "
                "lost its lease after the message started to go out): the server may have it"
                if of_worker is None
                else f"worker {r.locked_by} stopped during the attempt (its shutdown drain ran "
                "out while the server had not answered): the server may have it"
            )
            result = AttemptResult(
                Outcome.TEMPORARY, None, text, 0, step="data", possibly_delivered=True
            )
            items.append((claimed, result))
        rows = self._attempt_rows(items, now, lambda m: holder[m.id])
        self._write_attempts(conn, rows, now)
        self.on_settled(rows.recorded)
        return rows.recorded

    def abandon(self, worker_id: str) -> int:
        """A stopping worker whose drain ran out: its attempts still open are closed as
        possibly delivered, the rest of what it holds is ready again now. Returns how many
        messages it gave back either way."""
        now = self.clock()
        with self.engine.begin() as conn:
            settled = self._settle_unfinished(conn, now, of_worker=worker_id)
            mine = (Message.status == Status.SENDING.value) & (Message.locked_by == worker_id)
            released = _release(conn, mine, now)
        return len(settled) + released

    def postpone(
        self,
        worker_id: str,
        items: Sequence[tuple[Claimed, datetime, str | None]],
    ) -> None:
        """Give claimed messages back without an attempt, to be tried at the given time.

        Used when the server cannot be used yet (OAuth2 needs re-authorization: the reason is
        shown as ``last_error`` and the mail is ``deferred``, never failed), when a rate limit
        would hold a message past its lease, and on shutdown. Mail given back ready at once
        (for another process: shutdown, remote output, connections all open elsewhere) wakes
        the workers of every process after the commit.
        """
        if not items:
            return
        now = self.clock()
        with self.sessions.begin() as db:
            if any(when <= now for _c, when, _r in items):
                mark_ready(db)
            for claimed, when, reason in items:
                if reason is not None:
                    status = Status.DEFERRED
                else:
                    status = Status.QUEUED if claimed.attempt_count == 0 else Status.DEFERRED
                values: dict[str, Any] = {
                    "status": status.value,
                    "next_attempt_at": when,
                    "locked_by": None,
                    "locked_until": None,
                    "updated_at": now,
                }
                if reason is not None:
                    values["last_error"] = reason
                db.execute(
                    update(Message)
                    .where(Message.id == claimed.id, Message.locked_by == worker_id)
                    .values(**values)
                )

    def heartbeat(self, worker_id: str, dead_after: timedelta) -> Heartbeat:
        """Renew this worker's heartbeat and take over the messages of workers whose
        heartbeat stopped more than ``dead_after`` ago, in one transaction: the attempts
        they had started are closed as possibly delivered (``_settle_unfinished``), the
        rest are ready again at once (their leases would have held them for up to
        ``MAILGATE_LEASE_S``)."""
        now = self.clock()
        with self.engine.begin() as conn:
            known = processes.beat(conn, worker_id, "worker", now)
            dead = processes.dead_workers(conn, now, dead_after)
            released = 0
            if dead:
                mine = (Message.status == Status.SENDING.value) & Message.locked_by.in_(dead)
                conn.execute(update(Message).where(mine).values(next_attempt_at=now))
                # Their connection slots (adapters/db/limits.py) are free at once too.
                conn.execute(delete(ServerConnection).where(ServerConnection.holder.in_(dead)))
                self._settle_unfinished(conn, now)
                released = _release(conn, mine, now)
        return Heartbeat(not known, dead, released)

    def leave(self, worker_id: str) -> None:
        """A worker that stops cleanly unregisters (after giving its messages back)."""
        with self.engine.begin() as conn:
            processes.leave(conn, worker_id)

    def extend(self, worker_id: str, ids: Sequence[str]) -> None:
        """Renew the lease on messages still in flight, so that a slow batch (a congested
        server, a rate limit) is not taken over and sent twice by another worker."""
        if not ids:
            return
        until = self.clock() + self.lease
        with self.sessions.begin() as db:
            for i in range(0, len(ids), 500):
                db.execute(
                    update(Message)
                    .where(
                        Message.id.in_(list(ids[i : i + 500])),
                        Message.locked_by == worker_id,
                        Message.status == Status.SENDING.value,
                    )
                    .values(locked_until=until, next_attempt_at=until)
                )

    def paused_servers(self) -> list[int]:
        with self.engine.connect() as conn:
            gate = pause_gate(conn, self.clock())
        return sorted(gate.skip - set(gate.probe_due))

    def next_due(
        self, skip_servers: Collection[int] = (), only_servers: Collection[int] | None = None
    ) -> datetime | None:
        """When the earliest claimable message becomes ready (for an idle worker's sleep)."""
        if only_servers is not None and not only_servers:
            return None
        query = select(func.min(Message.next_attempt_at)).where(
            Message.status.in_([*_FRESH, *_AGAIN])
        )
        with self.sessions() as db:
            # Mail of a paused configuration is not due before its pause ends.
            gate = pause_gate(db.connection(), self.clock())
            waiting = gate.skip - set(gate.probe_due)
            if skip_servers or waiting:
                query = query.where(_not_in_servers([*skip_servers, *waiting]))
            if only_servers is not None:
                query = query.where(Message.server_id.in_(list(only_servers)))
            value: datetime | None = db.scalar(query)
        if value is not None and value.tzinfo is None:
            from datetime import UTC

            value = value.replace(tzinfo=UTC)
        if gate.wake_at is not None and (value is None or gate.wake_at < value):
            value = gate.wake_at
        return value


def _attempt_event(attempt: dict[str, Any]) -> dict[str, Any]:
    """An attempt as a webhook event shows it (the API's attempt fields)."""
    return {
        "at": attempt["at"].isoformat().replace("+00:00", "Z"),
        "outcome": attempt["outcome"],
        "smtp_code": attempt["smtp_code"],
        "smtp_response": attempt["smtp_response"],
        "ms": attempt["ms"],
        "possibly_delivered": attempt["possibly_delivered"],
    }


def _pending(rcpt_to: list[str], recipient_status: dict[str, Any] | None) -> list[str]:
    if not recipient_status:
        return list(rcpt_to)
    return [r for r in rcpt_to if recipient_status.get(r, {}).get("status", "pending") == "pending"]


def _recipients_view(result: AttemptResult) -> dict[str, Any]:
    return {
        r: {"outcome": rr.outcome.value, "code": rr.code, "text": rr.text[:500]}
        for r, rr in result.recipients.items()
    }


def _merge_recipients(
    previous: dict[str, Any] | None,
    claimed: Claimed,
    result: AttemptResult,
    decision: Decision,
) -> dict[str, Any] | None:
    """Per-recipient state: ``delivered``, ``refused`` (permanently) or ``pending``."""
    if previous is None and decision.status is Status.SENT and decision.last_error is None:
        return None  # the common case: everyone got it at the first try
    state = dict(previous or {})
    pending = set(decision.pending)
    for rcpt in claimed.rcpt_to:
        rr = result.recipients.get(rcpt)
        code, text = (rr.code, rr.text) if rr is not None else (result.code, result.text)
        if rcpt in pending:
            status = "pending" if decision.status is Status.DEFERRED else "refused"
        elif (rr.outcome if rr is not None else result.outcome) is Outcome.DELIVERED:
            status = "delivered"
        else:
            status = "refused"
        state[rcpt] = {"status": status, "code": code, "text": text[:500]}
    return state


def _release(conn: Connection, held: Any, now: datetime) -> int:
    """Claimed messages (``held``: a condition on them) ready again now, as they were before
    the claim: ``queued`` if never tried, else ``deferred``."""
    released = 0
    for status, tried in ((Status.QUEUED, False), (Status.DEFERRED, True)):
        count = Message.attempt_count > 0 if tried else Message.attempt_count == 0
        released += conn.execute(
            update(Message)
            .where(held, count)
            .values(
                status=status.value,
                locked_by=None,
                locked_until=None,
                next_attempt_at=now,
                updated_at=now,
            )
        ).rowcount
    return released


def _last_error(decision: Decision, state: dict[str, Any] | None) -> str | None:
    """The message's last error: the decision's, and for a message now sent, also the
    recipients refused on an earlier attempt (the decision sees only this attempt's)."""
    if decision.status is not Status.SENT or not state:
        return decision.last_error
    refused = [
        f"{rcpt}: {describe(r.get('code'), str(r.get('text') or ''))}"
        for rcpt, r in state.items()
        if r.get("status") == "refused"
    ]
    return "refused: " + "; ".join(refused) if refused else decision.last_error


def _not_in_servers(server_ids: Sequence[int]) -> Any:
    # NOT IN alone would also drop rows whose server_id is NULL (SQL three-valued logic).
    return or_(Message.server_id.is_(None), Message.server_id.not_in(list(server_ids)))


def _unfinished_due(conn: Connection, now: datetime) -> Sequence[Any]:
    """The attempts marked started whose lease ran out (see ``_settle_unfinished``)."""
    if raw_sqlite(conn):
        return _UNFINISHED_DUE_SQLITE.named(conn, {"now": now})
    return conn.execute(_UNFINISHED_DUE, {"now": now}).all()


def _claimed_rows(conn: Connection, ids: list[str]) -> Sequence[Any]:
    """What an attempt needs of each of ``ids`` (``_CLAIMED``), with its content."""
    if raw_sqlite(conn):
        return _CLAIMED_SQLITE.named(conn, {"ids": as_json(ids)})
    return conn.execute(_CLAIMED, {"ids": ids}).all()


def _claimed(rows: Sequence[Any], ids: list[str], probes: list[str]) -> list[Claimed]:
    """The claimed messages of ``rows`` in the order of ``ids``."""
    order = {mid: i for i, mid in enumerate(ids)}
    claimed = [
        Claimed(
            id=r.id,
            tenant_id=r.tenant_id,
            server_id=r.server_id,
            server_name=r.server_name,
            mail_from=r.mail_from,
            rcpt_to=_pending(r.rcpt_to, r.recipient_status),
            raw=r.raw,
            attempt_count=r.attempt_count,
            created_at=r.created_at,
            expires_at=r.expires_at,
            recipient_status=r.recipient_status,
            probe=r.id in probes,
        )
        for r in rows
    ]
    claimed.sort(key=lambda c: order[c.id])
    return claimed
