"""Group commit: many requests' inserts in one transaction, each answered after it commits.

Submissions arriving while a transaction commits (or while another process holds SQLite's
write lock) wait for the next one, which takes all of them (up to ``max_batch``): one
write-lock turn and one commit (on PostgreSQL one WAL flush) for many ``202``s, instead of
one each. A request's awaitable resolves only after the transaction holding its rows has
committed, so a ``202`` still means "stored".

If the batch as a whole fails, it is rolled back and its items are written again in a new
transaction, each under its own savepoint, so that one bad item (say, a row whose server
was deleted meanwhile) fails alone.

Under load (the last batch held more than one item) the writer waits ``linger_s`` for more
before it writes: fewer, larger transactions; an idle writer writes at once, so a lone
request is not delayed.

Where the writing happens:

- SQLite: on the event loop, on a connection of its own. A transaction of a few inserts
  into a local file costs less than handing it to a thread: the hand-offs of the GIL between
  the event loop and a writer thread cost more CPU than the inserts (0.77 -> 0.57 ms per
  submission measured on the ASGI app). The loop never waits for the lock: if another
  process holds it, the batch is tried again a moment later (and grows meanwhile). The
  connection never checkpoints on commit (that is file I/O and an fsync); a thread does,
  once the WAL passes ``checkpoint_bytes``, unless another connection did it first.
- SQLite with ``sync_wal`` (``MAILGATE_SQLITE_SYNCHRONOUS=full``, the default): the commit
  on the loop writes the WAL frames without an fsync (``synchronous=NORMAL``), and the
  requests of that commit are answered only after an fsync of the WAL file has completed,
  in a thread of its own: what ``synchronous=FULL`` does at the end of each commit (an
  fsync of the WAL), without stopping the loop for it. One fsync covers every commit
  before it: batches committed while one runs wait for the next. (Before, the whole
  transaction went to a writer thread with ``synchronous=FULL``: 0.51 ms of CPU per
  submission and 1,080 a second against 0.34 ms and 2,150 with ``normal``, measured through
  ``mailgate serve``; the GIL's hand-offs to that thread cost more than the fsync.)
- PostgreSQL: in a thread of its own (a commit is a network round trip); it ends after
  ``idle_s`` without work and starts again on demand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from mailgate.adapters.db.engine import LOCK_WAIT_S, discard, loop_writer

log = logging.getLogger("mailgate.batch_writer")

T = TypeVar("T")
_Job = tuple[T, asyncio.AbstractEventLoop, "asyncio.Future[None]"]
LOCK_TIMEOUT_S = 30.0


class BatchWriter(Generic[T]):
    def __init__(
        self,
        engine: Engine,
        write: Callable[[Connection, Sequence[T]], bool],
        after_commit: Callable[[], None] = lambda: None,
        *,
        max_batch: int = 256,
        idle_s: float = 5.0,
        linger_s: float = 0.0,
        checkpoint_bytes: int = 8 << 20,
        checkpoint_check_s: float = 1.0,
        on_loop: bool | None = None,
        sync_wal: bool = False,
    ) -> None:
        """``write`` inserts a batch in the open transaction and returns whether
        ``after_commit`` (say, waking this process's workers) should run after the commit.
        ``on_loop``: write SQLite on the event loop (default for SQLite); ``False`` writes in
        the thread, as on PostgreSQL. ``sync_wal`` (SQLite on the loop): answer a commit's
        requests only after an fsync of the WAL file that followed it (see the module's
        docstring)."""
        self.engine = engine
        self.write_many = write
        self.after_commit = after_commit
        self.max_batch = max_batch
        self.idle_s = idle_s
        self.linger_s = linger_s
        self.checkpoint_bytes = checkpoint_bytes
        self.checkpoint_check_s = checkpoint_check_s
        self.checkpoints = 0
        sqlite = engine.dialect.name == "sqlite"
        self.on_loop = sqlite if on_loop is None else (on_loop and sqlite)
        self._last_size = 0
        self.batches = 0
        """Transactions committed (for tests and metrics)."""
        # PostgreSQL: the writer thread and its queue.
        self._queue: queue.SimpleQueue[_Job[T]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # SQLite: what waits for the next transaction, and the flush scheduled for it.
        self._pending: list[_Job[T]] = []
        self._flush: asyncio.TimerHandle | asyncio.Handle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._locked_since: float | None = None
        self._conn: Connection | None = None
        self._wal = f"{engine.url.database}-wal" if self.on_loop else ""
        self._checkpointing = False
        self._checked_at = 0.0
        # SQLite with sync_wal: committed, waiting for the next fsync of the WAL.
        self.sync_wal = sync_wal and self.on_loop
        self._unsynced: list[tuple[asyncio.Future[None], object]] = []
        self._syncing = False
        self._syncer: concurrent.futures.ThreadPoolExecutor | None = None
        self.syncs = 0
        """fsyncs of the WAL completed (for tests)."""

    async def write(self, item: T) -> None:
        """Return once ``item`` is committed; raise what writing it raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        job = (item, loop, future)
        if self.on_loop:
            if self._flush is not None and self._flush_loop is not loop:
                # The loop that was to flush is gone (tests run one loop after another);
                # what waited there was abandoned with it.
                self._flush.cancel()
                self._flush = None
                self._pending.clear()
            self._flush_loop = loop
            self._pending.append(job)
            if self._flush is None:
                if self.linger_s and self._last_size > 1:
                    self._flush = loop.call_later(self.linger_s, self._flush_on_loop, loop)
                else:
                    self._flush = loop.call_soon(self._flush_on_loop, loop)
        else:
            self._queue.put(job)
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="mailgate-batch-writer", daemon=True
                    )
                    self._thread.start()
        await future

    # ---- SQLite: on the event loop -------------------------------------------------------

    def _flush_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush = None
        jobs = self._pending[: self.max_batch]
        if not jobs:
            return
        try:
            conn = self._connection()
            conn.begin()
        except Exception as exc:
            outcomes: list[BaseException | None] = [exc] * len(jobs)
            if isinstance(exc, (OperationalError, sqlite3.OperationalError)) and _is_locked(exc):
                # Another process is writing: try again shortly; more requests join meanwhile.
                now = time.monotonic()
                self._locked_since = self._locked_since or now
                if now - self._locked_since < LOCK_TIMEOUT_S:
                    delay = min(0.005, 0.0005 * 2 ** min(4, int((now - self._locked_since) * 1000)))
                    self._flush = loop.call_later(delay, self._flush_on_loop, loop)
                    return
            else:
                # Disk full, I/O error, ...: every waiting request gets the error (a 503),
                # none waits forever; the next batch starts on a fresh connection.
                self._drop_connection()
        else:
            outcomes = self._in_transaction(conn, [item for item, _l, _f in jobs])
        self._locked_since = None
        del self._pending[: len(jobs)]
        self._last_size = len(jobs)
        results = [(f, outcome) for (_i, _l, f), outcome in zip(jobs, outcomes, strict=True)]
        if self.sync_wal:
            # Committed rows wait for the fsync; a failed item's error is answered now.
            self._unsynced += [(f, o) for f, o in results if o is None]
            _settle([(f, o) for f, o in results if o is not None])
            self._sync(loop)
        else:
            _settle(results)
        if self._pending and self._flush is None:
            self._flush = loop.call_soon(self._flush_on_loop, loop)
        self._maybe_checkpoint(loop)

    def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start an fsync of the WAL for the commits waiting for one, unless one is running
        (then the next starts when it ends). Their requests are answered when it is done;
        if it fails, each gets an error meaning "the database cannot write" (a 503)."""
        if self._syncing or not self._unsynced:
            return
        waiting, self._unsynced = self._unsynced, []
        self._syncing = True
        if self._syncer is None:
            self._syncer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="mailgate-wal-fsync"
            )

        def fsync() -> None:
            # The answer goes straight back to the loop (one call_soon_threadsafe), not
            # through run_in_executor's future: that took two more turns of a busy loop
            # before the requests were answered.
            error: Exception | None = None
            try:
                self._fsync_wal()
            except Exception as exc:  # every waiting request gets it (a 503)
                error = exc
            try:
                loop.call_soon_threadsafe(synced, error)
            except RuntimeError:  # the loop is closed: what waited there went with it
                self._syncing = False

        def synced(exc: Exception | None) -> None:
            self._syncing = False
            if exc is None:
                self.syncs += 1
                _settle(waiting)
            else:
                log.error("fsync of the WAL failed: %s", exc)
                error = sqlite3.OperationalError(f"disk I/O error: fsync of the WAL failed: {exc}")
                _settle([(f, error) for f, _o in waiting])
            self._sync(loop)

        self._syncer.submit(fsync)

    def _fsync_wal(self) -> None:
        """fsync the WAL file (by its path: SQLite may have replaced it). No WAL file: the
        last connection's checkpoint moved everything into the database file and removed
        it, having synced the database file first (SQLite's checkpoint does, also with
        ``synchronous=NORMAL``)."""
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            # What SQLite itself calls on Linux for synchronous=FULL (data and the file's
            # size, not its times).
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            # Kept for the writer's life; a locked batch is tried again by the loop.
            self._conn = loop_writer(self.engine)
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        discard(conn)

    @property
    def checkpoint_running(self) -> bool:
        """A WAL checkpoint has been started in a thread and has not finished yet."""
        return self._checkpointing

    def _maybe_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        if self._checkpointing or now - self._checked_at < self.checkpoint_check_s:
            return
        self._checked_at = now
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return
        if size < self.checkpoint_bytes:
            return
        self._checkpointing = True

        def checkpoint() -> None:
            # Outside any transaction (a checkpoint cannot run inside one): the raw driver
            # connection, in autocommit mode.
            raw = self.engine.raw_connection()
            try:
                raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # type: ignore[union-attr]
                self.checkpoints += 1
            except sqlite3.Error:
                log.warning("checkpointing the WAL failed", exc_info=True)
            finally:
                raw.close()
                self._checkpointing = False

        loop.run_in_executor(None, checkpoint)

    # ---- PostgreSQL: a thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            jobs = [first]
            if self.linger_s and self._last_size > 1 and self._queue.empty():
                time.sleep(self.linger_s)
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._last_size = len(jobs)
            try:
                # SQLite (a durable writer, in this thread): wait for another process's write
                # lock no longer than on the event loop, then fail the batch (451 / 503).
                with self.engine.connect().execution_options(
                    **{LOCK_WAIT_S: LOCK_TIMEOUT_S}
                ) as conn:
                    conn.begin()
                    outcomes = self._in_transaction(conn, [item for item, _l, _f in jobs])
            except Exception as exc:
                outcomes = [exc] * len(jobs)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], object]]] = {}
            for (_item, loop, future), outcome in zip(jobs, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, results in by_loop.items():
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_settle, results)

    # ---- both ------------------------------------------------------------------------------

    def _in_transaction(self, conn: Connection, items: list[T]) -> list[BaseException | None]:
        """Write ``items`` in the transaction just begun on ``conn`` and commit it; what
        became of each item. A failing batch is rolled back and written again item by item,
        each under a savepoint, in a new transaction."""
        outcomes: list[BaseException | None] = [None] * len(items)
        signal = False
        try:
            try:
                # No savepoint around the batch (SQLAlchemy's SAVEPOINT and RELEASE were 5 %
                # of a submission's CPU): a batch that fails is rolled back and written
                # again in a new transaction, item by item.
                signal = self.write_many(conn, items)
            except Exception:
                if len(items) == 1:
                    raise
                log.warning("a batch of %d failed; writing its items one by one", len(items))
                conn.rollback()
                conn.begin()
                signal = False
                for i, item in enumerate(items):
                    try:
                        with conn.begin_nested():
                            signal = self.write_many(conn, [item]) or signal
                    except Exception as exc:
                        outcomes[i] = exc
            conn.commit()
        except Exception as exc:
            with suppress(Exception):
                conn.rollback()
            return [exc] * len(items)
        self.batches += 1
        if signal:
            self.after_commit()
        return outcomes


def _is_locked(exc: Exception) -> bool:
    """SQLite's "database is locked" (raw from the begin hook, or wrapped by SQLAlchemy)."""
    return "database is locked" in str(exc)


def _settle(results: Sequence[tuple[asyncio.Future[None], object]]) -> None:
    for future, outcome in results:
        if future.done():  # the request was cancelled (client gone); its rows stay
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(None)
