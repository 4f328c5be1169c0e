"""One claim beside a deep backlog (bench/README.md, the 1M row): N messages queued for one
configuration, whose lane is full (skipped), and the time of the worker's claim then -
alone, and with a second configuration's 10 messages due after all of them.

    .venv/bin/python bench/claim.py --db sqlite --dir /tmp/claimbench       # keeps the data
    .venv/bin/python bench/claim.py --db postgres --pg-url URL [--drop]

The first run queues the rows (bulk copies, as bench/run.py does; minutes for 1M); later
runs against the same --dir / database measure again (e.g. before and after a change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, func, insert, select, text, update
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import container, prequeue, server_config

from mailgate.adapters.db.tables import EmailServer, Message, MessageContent, Tenant
from mailgate.bootstrap import Container
from mailgate.domain.messages import new_message_id
from mailgate.entrypoints.worker import Worker
from mailgate.schemas.email_server import EmailServerIn

PG_DATABASE = "mailgate_claimbench"


def server_id(c: Container, name: str) -> int | None:
    with c.session() as db:
        sid: int | None = db.scalar(select(EmailServer.id).where(EmailServer.name == name))
        return sid


def add_other(c: Container, n: int, name: str = "OTHER") -> None:
    """Configuration ``name`` with ``n`` messages due after every queued one."""
    if server_id(c, name) is None:
        with c.session() as db:
            tenant = db.scalar(select(Tenant).where(Tenant.name == "home"))
            assert tenant is not None
            config = {**server_config(2525), "name": name}
            c.servers.create(db, tenant, EmailServerIn.model_validate(config))
    sid = server_id(c, name)
    assert sid is not None
    with c.session() as db:
        if db.scalar(select(Message.id).where(Message.server_id == sid).limit(1)):
            return
        first = db.scalar(select(Message).limit(1))
        assert first is not None
        last = db.scalar(select(func.max(Message.next_attempt_at)))
        assert last is not None
        template = {col.key: getattr(first, col.key) for col in Message.__table__.columns}
        raw = db.scalar(select(MessageContent.raw).limit(1))
        rows = []
        for i in range(n):
            due = last + timedelta(milliseconds=i + 1)
            mid = new_message_id()
            rows.append(
                {**template, "id": mid, "server_id": sid, "server_name": name,
                 "next_attempt_at": due, "created_at": due}
            )  # fmt: skip
        db.execute(insert(Message), rows)
        db.execute(insert(MessageContent), [{"message_id": r["id"], "raw": raw} for r in rows])


def timed_claims(c: Container, skip: list[int], repeat: int) -> dict[str, Any]:
    """Median time of ``repeat`` claims; what each took is made ready again afterwards."""
    worker = Worker(c, worker_id="claimbench")
    queue, budget = worker.store, worker.service.lane_budget
    limit = worker.service.batch
    times, found = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        claimed = queue.claim("claimbench", limit, skip_servers=skip, per_server=budget)
        times.append((time.perf_counter() - started) * 1000)
        found.append(len(claimed))
        assert not [m for m in claimed if m.server_id in skip], "took a skipped one's mail"
        with c.session() as db:  # ready again, as before (these rows are due when created)
            db.execute(
                update(Message).where(Message.id.in_([m.id for m in claimed])).values(
                    status="queued", locked_by=None, locked_until=None,
                    next_attempt_at=Message.created_at)
            )  # fmt: skip
    return {"ms_median": round(statistics.median(times), 2), "ms": [round(t, 2) for t in times],
            "claimed": found}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mailgate-claimbench"))
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--others", type=int, default=0, help="then this many configurations more, 100 each"
    )
    ap.add_argument("--drop", action="store_true", help="drop the PostgreSQL database after")
    args = ap.parse_args()
    url = None
    admin = None
    if args.db == "postgres":
        admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": PG_DATABASE}
            )
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
        url = make_url(args.pg_url).set(database=PG_DATABASE).render_as_string(False)
    args.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    c = container(args.dir, url)  # migrates
    print(f"container (and migrations): {time.perf_counter() - started:.1f} s", flush=True)
    try:
        sink = server_id(c, "SINK")
        if sink is None:
            started = time.perf_counter()
            prequeue(c, 2525, args.n, body="x" * 1024)
            if args.db == "postgres":
                with c.engine.connect() as conn:
                    conn.execute(text("ANALYZE messages"))
                    conn.commit()
            print(f"queued {args.n}: {time.perf_counter() - started:.0f} s", flush=True)
        sink = server_id(c, "SINK")
        assert sink is not None
        other = server_id(c, "OTHER")
        if other is not None:  # from an earlier run: "alone" first
            with c.session() as db:
                gone = select(Message.id).where(Message.server_id == other)
                db.execute(delete(MessageContent).where(MessageContent.message_id.in_(gone)))
                db.execute(delete(Message).where(Message.server_id == other))
        alone = timed_claims(c, [sink], args.repeat)
        print(f"claim, SINK skipped, nothing else: {alone}", flush=True)
        add_other(c, 10)
        beside = timed_claims(c, [sink], args.repeat)
        print(f"claim, SINK skipped, OTHER's 10 due last: {beside}", flush=True)
        fast = timed_claims(c, [], args.repeat)
        print(f"claim, nothing skipped (takes SINK's): {fast}", flush=True)
        if args.others:
            for i in range(args.others):
                add_other(c, 100, f"OTHER{i}")
            many = timed_claims(c, [sink], args.repeat)
            print(f"claim, SINK skipped, {args.others} more with 100 each: {many}", flush=True)
    finally:
        c.engine.dispose()
        if admin is not None:
            if args.drop:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
