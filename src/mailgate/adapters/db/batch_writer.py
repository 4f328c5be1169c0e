"""Group commit: many requests' inserts in one transaction, each answered after it commits.

Submissions arriving while a transaction commits wait for the next one, which takes all of
them (up to ``max_batch``): one write-lock turn and one commit (on PostgreSQL one WAL flush)
for many ``202``s, instead of one each. A request's awaitable resolves only after the
transaction holding its rows has committed, so a ``202`` still means "stored".

If a batch fails, its items are written again one by one, each in its own transaction, so
that one bad item (say, a row whose server was deleted meanwhile) fails alone.

Under load (the last batch held more than one item) the writer waits ``linger_s`` for more
before it writes: fewer, larger transactions; an idle writer writes at once, so a lone
request is not delayed. Writes are Core statements on a plain connection (an ORM session
cost 0.2-0.4 ms more per transaction).

One writer thread per process, started on demand; it ends after ``idle_s`` without work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine

log = logging.getLogger("mailgate.batch_writer")

T = TypeVar("T")
_Job = tuple[T, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


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
    ) -> None:
        """``write`` inserts a batch in the open transaction and returns whether
        ``after_commit`` (say, waking this process's workers) should run after the commit."""
        self.engine = engine
        self.write_many = write
        self.after_commit = after_commit
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._last_size = 0
        self.idle_s = idle_s
        self._queue: queue.SimpleQueue[_Job[T]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        """Transactions committed (for tests and metrics)."""

    async def write(self, item: T) -> None:
        """Return once ``item`` is committed; raise what writing it raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((item, loop, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mailgate-batch-writer", daemon=True
                )
                self._thread.start()
        await future

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
                # Under load, wait a moment for more: fewer, larger transactions. An idle
                # writer (last batch a single item) writes at once.
                time.sleep(self.linger_s)
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._last_size = len(jobs)
            self._commit(jobs)

    def _commit(self, jobs: list[_Job[T]]) -> None:
        outcomes: list[BaseException | None]
        try:
            self._transaction([item for item, _loop, _future in jobs])
            outcomes = [None] * len(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                outcomes = [exc]
            else:
                log.warning("a batch of %d failed; writing its items one by one", len(jobs))
                outcomes = []
                for item, _loop, _future in jobs:
                    try:
                        self._transaction([item])
                        outcomes.append(None)
                    except Exception as exc:
                        outcomes.append(exc)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], object]]] = {}
        for (_item, loop, future), outcome in zip(jobs, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, results in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, results)

    def _transaction(self, items: list[T]) -> None:
        with self.engine.begin() as conn:
            signal = self.write_many(conn, items)
        self.batches += 1
        if signal:
            self.after_commit()


def _settle(results: list[tuple[asyncio.Future[None], object]]) -> None:
    for future, outcome in results:
        if future.done():  # the request was cancelled (client gone); its rows stay
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(None)
