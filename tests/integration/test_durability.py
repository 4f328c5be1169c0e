"""What a 202 guarantees on SQLite (README "What a 202 guarantees"): a submission is
answered only after an fsync of the WAL that followed its commit - what synchronous=FULL
does at each commit, done by the group commit in a thread of its own while the event loop
goes on (``BatchWriter(sync_wal=True)``); submissions with an idempotency key commit with
synchronous=FULL; every other transaction runs with NORMAL;
MAILGATE_SQLITE_SYNCHRONOUS=normal trades the fsync for speed. A power loss itself cannot
be staged here: these tests check the order of commit, fsync and answer."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from tests.conftest import make_settings

from mailgate.adapters.db.batch_writer import BatchWriter
from mailgate.adapters.db.engine import make_engine
from mailgate.adapters.db.health import is_unavailable
from mailgate.bootstrap import build

_FULL, _NORMAL = 2, 1


def _synchronous(engine: Engine) -> int:
    with engine.begin() as conn:
        value = conn.execute(text("PRAGMA synchronous")).scalar_one()
        return int(value)


def test_submissions_wait_for_the_wal_fsync_and_the_rest_use_normal(
    tmp_path: Path, sqlite_url: str
) -> None:
    c = build(make_settings(tmp_path, sqlite_url))
    try:
        assert c.settings.sqlite_synchronous == "full"
        assert c.submissions.on_loop and c.submissions.sync_wal
        assert _synchronous(c.engine) == _NORMAL
        with c.session(durable=True) as db:  # submissions with an idempotency key
            assert int(db.execute(text("PRAGMA synchronous")).scalar_one()) == _FULL
        assert _synchronous(c.engine) == _NORMAL  # the pooled connection went back
    finally:
        c.engine.dispose()


def test_normal_is_the_operators_choice(tmp_path: Path, sqlite_url: str) -> None:
    c = build(make_settings(tmp_path, sqlite_url, sqlite_synchronous="normal"))
    try:
        assert c.submissions.on_loop and not c.submissions.sync_wal
        with c.session(durable=True) as db:
            assert int(db.execute(text("PRAGMA synchronous")).scalar_one()) == _NORMAL
    finally:
        c.engine.dispose()


class _Log:
    """What happened, in order: commits (with the WAL's size then), fsyncs (of which file,
    the WAL's size when they completed), answers."""

    def __init__(self, wal: str) -> None:
        self.wal = wal
        self.events: list[tuple[str, Any]] = []

    def wal_size(self) -> int:
        return os.stat(self.wal).st_size


def _writer(sqlite_url: str, log: _Log, fsync_s: float = 0.0) -> BatchWriter[int]:
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))

    def write(conn: Connection, items: Sequence[int]) -> bool:
        conn.execute(text("INSERT INTO t (n) VALUES (:n)"), [{"n": n} for n in items])
        log.events.append(("write", list(items)))
        return False

    writer = BatchWriter(engine, write, sync_wal=True)
    real_fsync = writer._fsync_wal

    def fsync() -> None:
        time.sleep(fsync_s)
        real_fsync()
        log.events.append(("fsync", log.wal_size()))

    writer._fsync_wal = fsync  # type: ignore[method-assign]
    return writer


def test_a_submission_is_answered_after_an_fsync_of_the_wal_holding_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = sqlite_url.removeprefix("sqlite:///") + "-wal"
    log = _Log(wal)
    synced_files: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced_files.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    writer = _writer(sqlite_url, log, fsync_s=0.05)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    async def one(n: int) -> None:
        await writer.write(n)
        # Everything this item's commit wrote is on disk: the last fsync before this
        # answer completed with the WAL at least as long as it was after the commit.
        committed_at = next(i for i, e in enumerate(log.events) if e[0] == "write" and n in e[1])
        synced = [e for e in log.events[committed_at:] if e[0] == "fsync"]
        assert synced, f"item {n} was answered before any fsync after its commit"
        log.events.append(("answer", n))

    async def main() -> None:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        for burst in range(3):
            await asyncio.gather(*(one(burst * 100 + i) for i in range(20)))
        stop.set()
        await tick

    asyncio.run(main())
    assert sum(1 for e in log.events if e[0] == "answer") == 60
    assert synced_files and all(f == wal for f in synced_files), synced_files
    # The loop went on while the fsyncs (50 ms each here) ran in their thread.
    assert ticks >= 10
    # Commits while an fsync ran shared the next one: fewer fsyncs than commits.
    assert writer.syncs <= sum(1 for e in log.events if e[0] == "write")


def test_a_failed_fsync_fails_its_submissions_as_database_unavailable(sqlite_url: str) -> None:
    log = _Log(sqlite_url.removeprefix("sqlite:///") + "-wal")
    writer = _writer(sqlite_url, log)

    def broken() -> None:
        raise OSError(5, "Input/output error")

    writer._fsync_wal = broken  # type: ignore[method-assign]

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(writer.write(i) for i in range(5)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Exception) and is_unavailable(o) for o in outcomes), outcomes

    writer._fsync_wal = lambda: None  # type: ignore[method-assign]
    assert asyncio.run(main()) == [None] * 5  # and the next ones go through again
