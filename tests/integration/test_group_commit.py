"""Group commit of submissions (``BatchWriter``), on SQLite and PostgreSQL.

Requests that arrive while a transaction commits share the next one; each is answered only
after the transaction with its rows has committed; one bad item fails alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import httpx
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import IntegrityError
from tests.conftest import Api, password_server

from mailgate.adapters.db.batch_writer import BatchWriter
from mailgate.adapters.db.tables import Message, MessageContent, Tenant
from mailgate.bootstrap import Container
from mailgate.entrypoints.api.app import create_app
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox import Outbox, Owner, Prepared


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
        return [c.outbox.prepare(conn, home, Owner("t", None), body) for _ in range(n)]


def _count(c: Container) -> int:
    with c.session() as db:
        return int(db.scalar(select(func.count()).select_from(Message)) or 0)


def test_waiting_submissions_share_one_transaction(api: Api) -> None:
    c = api.container
    items = _prepared(api, api.admin_token(), 6)
    release = threading.Event()
    sizes: list[int] = []

    def write(conn: Connection, batch: Sequence[Prepared]) -> bool:
        sizes.append(len(batch))
        if len(sizes) == 1:
            release.wait(10)  # hold the first transaction until the others are queued
        return Outbox.store_many(conn, batch)

    writer: BatchWriter[Prepared] = BatchWriter(c.engine, write)

    async def main() -> None:
        first = asyncio.create_task(writer.write(items[0]))
        await asyncio.sleep(0.2)
        rest = [asyncio.create_task(writer.write(p)) for p in items[1:]]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in [first, *rest]), "answered before its commit"
        release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert sizes == [1, 5]
    assert writer.batches == 2
    assert _count(c) == 6
    with c.session() as db:
        assert db.scalar(select(func.count()).select_from(MessageContent)) == 6


def test_a_bad_item_fails_alone(api: Api) -> None:
    c = api.container
    items = _prepared(api, api.admin_token(), 3)
    bad = Prepared({**items[1].values, "tenant_id": 999_999}, items[1].raw)  # no such tenant
    release = threading.Event()
    calls: list[int] = []

    def write(conn: Connection, batch: Sequence[Prepared]) -> bool:
        calls.append(len(batch))
        if len(calls) == 1:
            release.wait(10)
        return Outbox.store_many(conn, batch)

    writer: BatchWriter[Prepared] = BatchWriter(c.engine, write)

    async def main() -> list[Any]:
        blocker = asyncio.create_task(writer.write(items[0]))
        await asyncio.sleep(0.2)
        tasks = [asyncio.create_task(writer.write(p)) for p in (bad, items[2])]
        await asyncio.sleep(0.1)
        release.set()
        return await asyncio.gather(blocker, *tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IntegrityError)
    assert calls == [1, 2, 1, 1]  # the failed batch of two, then each alone
    assert _count(c) == 2


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
