"""Group commit of submissions (``BatchWriter``), on SQLite and PostgreSQL.

Requests that arrive while a transaction commits share the next one; each is answered only
after the transaction with its rows has committed; one bad item fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from tests.conftest import Api, password_server

from mailgate.adapters.db.batch_writer import BatchWriter
from mailgate.adapters.db.tables import Message, MessageContent, Tenant
from mailgate.bootstrap import Container
from mailgate.entrypoints.api.app import create_app
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox import Owner, Prepared, SubmitOptions, store_many


def _prepared(api: Api, admin: str, n: int) -> list[Prepared]:
    """``n`` real prepared submissions (through the API's own prepare step)."""
    c = api.container
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    assert r.status_code == 201, r.text
    with c.session() as db:
        home = db.scalar(select(Tenant.id).where(Tenant.name == "home"))
    assert home is not None
    body = MessageIn.model_validate({"to": ["b@example.com"], "subject": "s", "text": "hi"})
    with c.read_engine.connect() as conn:
        return [
            c.outbox.submitter.prepare(conn, home, Owner("t", None), body, SubmitOptions.of(body))
            for _ in range(n)
        ]


def _count(c: Container) -> int:
    # A read-only connection: it does not wait for a write lock another connection holds.
    with c.read_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Message)).scalar() or 0)


@contextmanager
def write_lock_held(c: Container) -> Iterator[Callable[[], None]]:
    """Another connection holds what the writer needs (SQLite: the database's write lock;
    PostgreSQL: a lock on the messages table) until the returned function is called."""
    raw = c.engine.raw_connection()
    cur = raw.cursor()
    if c.engine.dialect.name == "sqlite":
        cur.execute("BEGIN IMMEDIATE")
    else:
        cur.execute("BEGIN")
        cur.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            raw.commit()
            released = True

    try:
        yield release
    finally:
        release()
        raw.close()


def test_waiting_submissions_share_one_transaction(api: Api) -> None:
    c = api.container
    items = _prepared(api, api.admin_token(), 6)
    writer: BatchWriter[Prepared] = BatchWriter(c.engine, store_many, linger_s=0.005)

    async def main() -> None:
        with write_lock_held(c) as release:
            tasks = [asyncio.create_task(writer.write(p)) for p in items]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks), "answered before its commit"
            assert _count(c) == 0
            release()
            await asyncio.gather(*tasks)

    asyncio.run(main())
    # SQLite retries on the loop and takes all six at once; PostgreSQL's thread was already
    # waiting inside the first transaction with one or more of them.
    assert writer.batches <= 2
    assert _count(c) == 6
    with c.session() as db:
        assert db.scalar(select(func.count()).select_from(MessageContent)) == 6


def test_a_bad_item_fails_alone(api: Api) -> None:
    c = api.container
    items = _prepared(api, api.admin_token(), 3)
    bad = Prepared({**items[1].values, "tenant_id": 999_999}, items[1].raw)  # no such tenant
    writer: BatchWriter[Prepared] = BatchWriter(c.engine, store_many)

    async def main() -> list[Any]:
        with write_lock_held(c) as release:
            tasks = [asyncio.create_task(writer.write(p)) for p in (items[0], bad, items[2])]
            await asyncio.sleep(0.2)
            release()
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IntegrityError)
    assert _count(c) == 2


# SQLite's write-ahead log is the subject: no PostgreSQL variant (it would have nothing to
# test, and a skipped PostgreSQL test fails the run under CI=true).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_writer_keeps_sqlites_wal_from_growing(api: Api) -> None:
    """The writer's connection does not checkpoint on commit (that would be file I/O on the
    event loop); with no other writer, its own checkpoints in a thread must bound the WAL."""
    c = api.container
    items = _prepared(api, api.admin_token(), 300)
    writer: BatchWriter[Prepared] = BatchWriter(
        c.engine, store_many, checkpoint_bytes=256 << 10, checkpoint_check_s=0.0
    )
    wal = Path(f"{c.engine.url.database}-wal")

    async def main() -> None:
        for i in range(0, 300, 10):
            await asyncio.gather(*(writer.write(p) for p in items[i : i + 10]))
            # Let a started checkpoint finish: on a loaded machine its thread may be scheduled
            # late, and what is tested is that the writer starts them and they bound the
            # file, not how soon the OS runs a thread.
            for _ in range(1000):
                await asyncio.sleep(0.01)
                if not writer.checkpoint_running:
                    break

    asyncio.run(main())
    assert _count(c) == 300
    assert writer.checkpoints >= 1
    # 300 messages of ~1 KB plus indexes would be well over 256 KB of WAL without them.
    assert wal.stat().st_size < 2 * (256 << 10) + 200_000


def test_concurrent_requests_are_all_stored(api: Api) -> None:
    c = api.container
    admin = api.admin_token()
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    assert r.status_code == 201, r.text
    key = api.make_api_key(admin, "home")
    app = create_app(c)

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {key}"}
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/api/v1/tenants/home/messages",
                        json={"to": ["b@example.com"], "subject": f"m{i}", "text": "x"},
                    )
                    for i in range(40)
                )
            )

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [202] * 40
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 40
    with c.session() as db:
        stored = set(db.scalars(select(Message.id)))
        subjects = set(db.scalars(select(Message.subject)))
    assert ids <= stored
    assert subjects >= {f"m{i}" for i in range(40)}


def test_sqlites_prepared_inserts_store_what_sqlalchemy_stores(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``store_many`` on SQLite inserts through ``PreparedStatement`` (the DBAPI connection):
    the same prepared submissions - plain, held, scheduled, with metadata, HTML with a
    priority, raw MIME - stored that way and through SQLAlchemy into two copies of one
    database give the same values in every column."""
    import sqlite3
    from datetime import UTC, datetime, timedelta

    from fastapi.testclient import TestClient
    from tests.conftest import make_settings

    from mailgate.adapters.db import prepared
    from mailgate.adapters.db.engine import make_engine
    from mailgate.bootstrap import build, first_start

    c = build(make_settings(tmp_path, sqlite_url))
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        api = Api(client, c)
        admin = api.admin_token()
        r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
        assert r.status_code == 201, r.text
    with c.session() as db:
        home = db.scalar(select(Tenant.id).where(Tenant.name == "home"))
    assert home is not None
    later = datetime.now(UTC) + timedelta(days=1)
    bodies = [
        {"to": ["b@example.com"], "subject": "plain", "text": "hi"},
        {"to": ["b@example.com"], "subject": "held", "text": "x", "hold": True},
        {"to": ["b@example.com"], "subject": "later", "text": "x", "send_at": later.isoformat()},
        {"to": ["b@example.com"], "subject": "meta", "text": "x", "metadata": {"order": "42"}},
        {"to": ["b@example.com"], "subject": "urgent", "html": "<p>x</p>", "priority": "high"},
    ]
    items = []
    with c.read_engine.connect() as conn:
        for body in bodies:
            m = MessageIn.model_validate(body)
            items.append(
                c.outbox.submitter.prepare(conn, home, Owner("t", None), m, SubmitOptions.of(m))
            )
        raw_mime = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: raw\r\n\r\nbody\r\n"
        items.append(
            c.outbox.submitter.prepare(conn, home, Owner("t", None), raw_mime, SubmitOptions())
        )
    source = sqlite_url.removeprefix("sqlite:///")
    c.engine.dispose()

    def stored(name: str, raw: bool) -> list[list[tuple[object, ...]]]:
        target = tmp_path / f"{name}.db"
        with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
            src.backup(dst)  # the database with its tenant and e-mail server
        engine = make_engine(f"sqlite:///{target}")
        monkeypatch.setattr(prepared, "RAW", raw)
        with engine.begin() as conn:
            store_many(conn, items)
        with sqlite3.connect(target) as db:
            out = [
                db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("messages", "message_contents")
            ]
        engine.dispose()
        return out

    raw_rows = stored("raw", True)
    assert len(raw_rows[0]) == len(items) and len(raw_rows[1]) == len(items)
    assert raw_rows == stored("sqlalchemy", False)
