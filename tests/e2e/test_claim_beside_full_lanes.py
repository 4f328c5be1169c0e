"""The claim beside full lanes (``SqlDeliveryQueue.claim`` with ``skip_servers``): the other
configurations' mail is found wherever it stands in the due order, each configuration's in
its own priority and due order up to its lane's room, mail without a configuration too, and
the work of a claim does not grow with the backlog of a skipped configuration (bench/README,
the 1M row). SQLite and PostgreSQL; the rows are copies of a message submitted through the
API, queued as a deep backlog would be."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update
from tests.conftest import password_server
from tests.e2e.outbox_helpers import Rig, rig

from mailgate.adapters.db import prepared
from mailgate.adapters.db.engine import READ_ONLY
from mailgate.adapters.db.queue import SqlDeliveryQueue
from mailgate.adapters.db.tables import EmailServer, Message, MessageContent
from mailgate.domain.messages import new_message_id
from mailgate.entrypoints.worker import Worker


@pytest.fixture
def r(tmp_path: Path, database_url: str) -> Iterator[Rig]:
    with rig(tmp_path, database_url) as r:
        for name in ("DEEP", "OTHER", "THIRD"):
            r.add_server(password_server(name))
        yield r


def sid(r: Rig, name: str) -> int:
    with r.c.sessions() as db:
        found = db.scalar(select(EmailServer.id).where(EmailServer.name == name))
        assert found is not None
        return found


def queue(r: Rig) -> SqlDeliveryQueue:
    return Worker(r.c, worker_id="claimer").store


def add(r: Rig, server: str | None, n: int, after_s: float = 0, **values: Any) -> list[str]:
    """``n`` copies of a message submitted through the API, for ``server`` (None: its
    configuration deleted), due ``after_s`` seconds before now, one millisecond apart in the
    order returned. The submitted one is marked sent, out of the way."""
    template_id = r.send(server="DEEP", to=["x@example.org"], text="x")
    server_id = None if server is None else sid(r, server)
    with r.c.sessions() as db, db.begin():
        first = db.get(Message, template_id)
        content = db.get(MessageContent, template_id)
        assert first is not None and content is not None
        template = {col.key: getattr(first, col.key) for col in Message.__table__.columns}
        first.status = "sent"
        start = r.clock.now - timedelta(seconds=after_s)
        rows = [
            {
                **template,
                "id": new_message_id(),
                "server_id": server_id,
                "server_name": server or "GONE",
                "next_attempt_at": start + timedelta(milliseconds=i),
                **values,
            }
            for i in range(n)
        ]
        for at in range(0, n, 5000):
            chunk = rows[at : at + 5000]
            db.execute(insert(Message), chunk)
            db.execute(
                insert(MessageContent),
                [{"message_id": row["id"], "raw": content.raw} for row in chunk],
            )
    return [row["id"] for row in rows]


def by_server(claimed: list[Any]) -> Counter[int | None]:
    return Counter(m.server_id for m in claimed)


def test_other_configurations_mail_is_found_behind_a_skipped_backlog_and_another_ones(
    r: Rig,
) -> None:
    deep, other, third = sid(r, "DEEP"), sid(r, "OTHER"), sid(r, "THIRD")
    add(r, "DEEP", 3000, after_s=600)  # due first, its lane full
    firsts = add(r, "THIRD", 40, after_s=300)  # not skipped, with far more than its share
    lasts = add(r, "OTHER", 3, after_s=10)  # due after everyone else's
    gone = add(r, None, 1, after_s=5)  # its configuration deleted
    claimed = queue(r).claim("claimer", 20, skip_servers=[deep], per_server=4)
    # The ordered walk took the first 20 not skipped - THIRD's - and then THIRD's share of
    # them: OTHER's mail, behind, waited until THIRD's backlog was gone.
    assert by_server(claimed) == {third: 4, other: 3, None: 1}
    ids = [m.id for m in claimed]
    assert [i for i in ids if i in firsts] == firsts[:4]  # in due order
    assert set(lasts) | set(gone) <= set(ids)
    with r.c.sessions() as db:
        taken = db.scalars(select(Message.status).where(Message.id.in_(ids))).all()
        assert set(taken) == {"sending"}
    # Claimed mail is not claimed again; the rest of THIRD's is.
    again = queue(r).claim("claimer", 20, skip_servers=[deep], per_server=4)
    assert by_server(again) == {third: 4}
    assert [m.id for m in again] == firsts[4:8]


def test_priority_and_due_order_within_a_configuration_and_its_lanes_room(r: Rig) -> None:
    deep, other = sid(r, "DEEP"), sid(r, "OTHER")
    add(r, "DEEP", 500, after_s=600, priority=0)
    normal = add(r, "OTHER", 5, after_s=300)
    low = add(r, "OTHER", 2, after_s=400, priority=2)
    high = add(r, "OTHER", 2, after_s=10, priority=0)  # due last, goes first
    claimed = queue(r).claim("claimer", 50, skip_servers=[deep], per_server=5)
    assert [m.id for m in claimed] == [*high, *normal[:3]]
    # The lane holds 3 already: room for 2.
    held = queue(r).claim("claimer", 50, skip_servers=[deep], per_server=5, held={other: 3})
    assert [m.id for m in held] == normal[3:]
    rest = queue(r).claim("claimer", 50, skip_servers=[deep], per_server=5)
    assert [m.id for m in rest] == low


def test_a_lane_that_holds_some_leaves_the_rest_of_the_claim_to_the_others(r: Rig) -> None:
    """Of the messages found, a claim keeps ``limit`` and what the lanes' room drops."""
    r.add_server(password_server("FOURTH"))
    deep, third = sid(r, "DEEP"), sid(r, "THIRD")
    add(r, "DEEP", 50, after_s=900)
    firsts = add(r, "THIRD", 10, after_s=600)
    seconds = add(r, "OTHER", 10, after_s=500)
    thirds = add(r, "FOURTH", 10, after_s=400)
    claimed = queue(r).claim("claimer", 6, skip_servers=[deep], per_server=4, held={third: 3})
    assert [m.id for m in claimed] == [firsts[0], *seconds[:4], thirds[0]]


def test_retries_and_lapsed_leases_beside_a_skipped_backlog_not_what_is_not_due(r: Rig) -> None:
    deep, other = sid(r, "DEEP"), sid(r, "OTHER")
    add(r, "DEEP", 500, after_s=600)
    retry = add(r, "OTHER", 2, after_s=60, status="deferred", attempt_count=1)
    lapsed = add(r, "OTHER", 1, after_s=30, status="sending", locked_by="dead")
    add(r, "OTHER", 3, after_s=-60, status="deferred", attempt_count=1)  # backing off
    add(r, "OTHER", 3, after_s=-3600, status="scheduled")  # send_at ahead
    add(r, "OTHER", 2, after_s=60, status="held")
    claimed = queue(r).claim("claimer", 20, skip_servers=[deep], per_server=10)
    assert sorted(m.id for m in claimed) == sorted([*retry, *lapsed])
    assert by_server(claimed) == {other: 3}


# Row locks are PostgreSQL's subject (SQLite serialises claims): no SQLite variant, which
# would only be a skip: CI runs the whole suite with none.
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_claim_beside_a_skipped_backlog_skips_rows_another_worker_locked(
    tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL: FOR UPDATE SKIP LOCKED in each configuration's seek - a row another
    claim has locked is passed over (not waited for), and the next one taken instead."""
    with rig(tmp_path, database_url) as r:
        for name in ("DEEP", "OTHER"):
            r.add_server(password_server(name))
        deep = sid(r, "DEEP")
        add(r, "DEEP", 200, after_s=600)
        others = add(r, "OTHER", 4, after_s=10)
        with r.c.engine.connect() as conn, conn.begin():
            conn.execute(select(Message.id).where(Message.id == others[0]).with_for_update())
            claimed = queue(r).claim("claimer", 20, skip_servers=[deep], per_server=2)
        assert [m.id for m in claimed] == others[1:3]


def test_a_claims_work_does_not_grow_with_a_skipped_configurations_backlog(
    tmp_path: Path, sqlite_url: str
) -> None:
    """SQLite's count of executed VM instructions (a progress handler), not a time: the
    claim beside a full lane of 1,000 and of 20,000 queued messages does the same work.
    Before ix_messages_server_ready it walked every one of them."""
    with rig(tmp_path, sqlite_url) as r:
        for name in ("DEEP", "OTHER"):
            r.add_server(password_server(name))
        deep, other = sid(r, "DEEP"), sid(r, "OTHER")
        add(r, "OTHER", 3, after_s=10)

        def work_of_claim() -> int:
            steps = [0]

            def count() -> int:
                steps[0] += 1
                return 0

            def hook(_conn: Any, cursor: Any, *_args: Any) -> None:
                cursor.connection.set_progress_handler(count, 100)

            event.listen(r.c.engine, "before_cursor_execute", hook)
            try:
                claimed = queue(r).claim("claimer", 20, skip_servers=[deep], per_server=4)
            finally:
                event.remove(r.c.engine, "before_cursor_execute", hook)
            assert by_server(claimed) == {other: 3}
            with r.c.engine.begin() as conn:  # ready again
                conn.execute(
                    update(Message)
                    .where(Message.server_id == other)
                    .values(status="queued", locked_by=None, next_attempt_at=r.clock.now)
                )
            return steps[0]

        add(r, "DEEP", 1000, after_s=600)
        shallow = work_of_claim()
        add(r, "DEEP", 19000, after_s=600)
        deeper = work_of_claim()
        # The walk of 19,000 more rows took some 10,000 steps of 100 instructions.
        assert deeper < shallow * 1.5 + 50, (shallow, deeper)


# ---- SQLite: what to take is read before the write lock is held ------------------------


def _race_after_pick(monkeypatch: pytest.MonkeyPatch, between: Any, times: int = 1) -> None:
    """Run ``between(picked_ids)`` after the claim read what to take and before it takes
    it (where another worker's claim or mark could come in), the first ``times`` times."""
    pick = SqlDeliveryQueue._pick
    calls = [0]

    def pick_then_race(self: SqlDeliveryQueue, *args: Any, **kwargs: Any) -> list[str]:
        picked = pick(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] <= times:
            between(picked)
        return picked

    monkeypatch.setattr(SqlDeliveryQueue, "_pick", pick_then_race)


def test_sqlite_claim_takes_only_what_is_still_ready_when_it_takes(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the read and the take, another worker took one message, and the owner of
    one whose lease had run out marked its attempt started (it is going out): neither is
    taken - the second would otherwise go out twice without a possibly-delivered record."""
    with rig(tmp_path, sqlite_url) as r:
        for name in ("DEEP", "OTHER"):  # add() submits its template through DEEP
            r.add_server(password_server(name))
        ids = add(r, "OTHER", 4, after_s=10)
        lease_over = r.clock.now - timedelta(seconds=1)
        with r.c.engine.begin() as conn:  # ids[1]: another worker's, its lease run out
            conn.execute(
                update(Message)
                .where(Message.id == ids[1])
                .values(status="sending", locked_by="late", next_attempt_at=lease_over)
            )

        def race(picked: list[str]) -> None:
            assert set(picked) == set(ids)
            with r.c.engine.begin() as conn:
                conn.execute(
                    update(Message)
                    .where(Message.id == ids[0])
                    .values(
                        status="sending",
                        locked_by="other",
                        next_attempt_at=r.clock.now + timedelta(minutes=2),
                    )
                )
                conn.execute(
                    update(Message)
                    .where(Message.id == ids[1])
                    .values(attempt_started_at=r.clock.now)
                )

        _race_after_pick(monkeypatch, race)
        claimed = queue(r).claim("claimer", 10)
        assert sorted(m.id for m in claimed) == sorted(ids[2:])
        with r.c.sessions() as db:
            holders = dict(db.execute(select(Message.id, Message.locked_by)).all())
        assert (holders[ids[0]], holders[ids[1]]) == ("other", "late")
        assert holders[ids[2]] == holders[ids[3]] == "claimer"


def test_sqlite_claim_reads_again_when_others_took_all_it_read(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message read was taken by another worker before the take: the claim reads
    again (under the lock) and takes the next ones, instead of reporting nothing ready (the
    worker would then sleep while mail waits)."""
    with rig(tmp_path, sqlite_url) as r:
        for name in ("DEEP", "OTHER"):  # add() submits its template through DEEP
            r.add_server(password_server(name))
        ids = add(r, "OTHER", 4, after_s=10)

        def race(picked: list[str]) -> None:
            assert picked == ids[:2]
            with r.c.engine.begin() as conn:
                conn.execute(
                    update(Message)
                    .where(Message.id.in_(picked))
                    .values(
                        status="sending",
                        locked_by="other",
                        next_attempt_at=r.clock.now + timedelta(minutes=2),
                    )
                )

        _race_after_pick(monkeypatch, race)
        claimed = queue(r).claim("claimer", 2)
        assert [m.id for m in claimed] == ids[2:]


def test_sqlite_claim_holds_the_write_lock_for_the_take_alone(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite has one write lock for every tenant: the claim's write transaction is the one
    UPDATE that takes the messages - the reads of what is ready, of paused configurations,
    of unfinished attempts and of the messages' content run outside it."""
    monkeypatch.setattr(prepared, "RAW", False)  # every statement through SQLAlchemy
    with rig(tmp_path, sqlite_url) as r:
        for name in ("DEEP", "OTHER"):  # add() submits its template through DEEP
            r.add_server(password_server(name))
        add(r, "OTHER", 5, after_s=10)
        in_write = [False]
        inside: list[str] = []
        outside: list[str] = []

        def begin(conn: Any) -> None:
            in_write[0] = not conn.get_execution_options().get(READ_ONLY)

        def end(_conn: Any) -> None:
            in_write[0] = False

        def execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            (inside if in_write[0] else outside).append(statement.split()[0])

        hooks = [("begin", begin), ("commit", end), ("rollback", end)]
        hooks.append(("before_cursor_execute", execute))
        for name, fn in hooks:
            event.listen(r.c.engine, name, fn)
        try:
            claimed = queue(r).claim("claimer", 10)
        finally:
            for name, fn in hooks:
                event.remove(r.c.engine, name, fn)
        assert len(claimed) == 5 and all(m.raw for m in claimed)
        assert inside == ["UPDATE"]
        assert outside and set(outside) == {"SELECT"}
