"""The database's write path as this process sees it, and which errors mean "the database
cannot take work now" (answered 503, not 500).

``WriteHealth`` watches every commit of an engine: the last one's outcome and time, and the
failures counted. A change of state is logged once - the first failure with its reason,
and the first success after failures - not once per request: a full disk under load would
otherwise write a log line per submission (and fill the disk the log is on).

What counts as unavailable (``is_unavailable``): SQLite's "database or disk is full", "disk
I/O error", "attempt to write a readonly database", "database is locked" (after the busy
timeout); PostgreSQL's lost connections, a read-only transaction or server, a full disk;
an exhausted connection pool. Not: constraint violations and malformed statements, which are
bugs or races with answers of their own.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc

log = logging.getLogger("mailgate.database")

RETRY_AFTER_S = 10
"""What a 503 for an unavailable database tells the client to wait (``Retry-After``)."""
PROBE_AFTER_S = 10.0
"""/healthz writes a heartbeat itself when this process wrote nothing for this long (or its
last write failed): an idle process has no recent commit to judge by."""
PROBE_SPACING_S = 2.0
"""At most one such probe per this many seconds, however often /healthz is asked."""
MIN_FREE_BYTES = 16 << 20
"""SQLite: less free space than this in the data directory, and /healthz answers 503 (a
commit needs room for its WAL frames; a nearly full disk fails the next burst)."""

_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.InternalError,  # PostgreSQL: read-only transaction (SQLSTATE 25006), shutdown
)
_NOT_UNAVAILABLE = (
    sa_exc.IntegrityError,
    sa_exc.ProgrammingError,
    sa_exc.DataError,
    sa_exc.NotSupportedError,
)


_WROTE = "mailgate_wrote"
_WRITES = {"INSERT", "UPDATE", "DELETE"}


def mark_wrote(conn: Any) -> None:
    """Tell ``WriteHealth`` that ``conn``'s transaction wrote, for statements run on the
    DBAPI connection directly (``adapters/db/prepared.py``), which its statement hook
    does not see."""
    conn.info[_WROTE] = True


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot take work now (see the module docstring)."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, _UNAVAILABLE):
            return True
        # A bare DatabaseError: SQLite's "database disk image is malformed" and the like.
        return not isinstance(exc, _NOT_UNAVAILABLE)
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection within the pool timeout
        return True
    # Raw driver errors that bypass SQLAlchemy's wrapping (the BEGIN IMMEDIATE hook).
    return isinstance(exc, sqlite3.OperationalError) or (type(exc) is sqlite3.DatabaseError)


def describe(exc: BaseException) -> str:
    """The driver's own words, one line: safe to log (no statement, no parameters; a DSN's
    password never appears in a driver's error text)."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first[:300]}"


@dataclass(frozen=True)
class WriteState:
    ok: bool | None
    """The last commit's outcome (``None``: nothing committed yet in this process)."""
    at: float | None
    """When (``time.time()``) the last commit succeeded or failed."""
    last_ok_at: float | None
    error: str | None
    """Why the last failure failed (while ``ok`` is false)."""
    failures: int
    """Failed commits counted since the process started."""


class WriteHealth:
    """Commit outcomes of one engine (``install``), for /healthz, /metrics and the log."""

    def __init__(
        self,
        on_failure: Callable[[], None] = lambda: None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.on_failure = on_failure
        self.now = now
        self._lock = threading.Lock()
        self._ok: bool | None = None
        self._at: float | None = None
        self._last_ok_at: float | None = None
        self._error: str | None = None
        self._failures = 0
        self._failed_since: float | None = None
        self._failed_run = 0
        self._probed_at = float("-inf")

    def install(self, engine: Engine) -> None:
        """Hear every commit of ``engine`` that wrote something: the dialect's ``do_commit``
        reports success after the database confirmed it (SQLAlchemy's ``commit`` event
        fires before it), ``handle_error`` every failed statement or commit. A transaction
        that only read proves nothing about the write path and is not counted."""
        dialect = engine.dialect
        if getattr(dialect, "_mailgate_health", None) is not None:
            return
        commit = dialect.do_commit
        pending = threading.local()

        @event.listens_for(engine, "before_cursor_execute")
        def _statement(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement[:6].upper() in _WRITES:
                conn.info[_WROTE] = True

        @event.listens_for(engine, "commit")
        def _committing(conn: Any) -> None:
            pending.wrote = conn.info.pop(_WROTE, False)

        @event.listens_for(engine, "rollback")
        def _rolled_back(conn: Any) -> None:
            conn.info.pop(_WROTE, None)

        def do_commit(dbapi_connection: Any) -> None:
            commit(dbapi_connection)
            if getattr(pending, "wrote", False):
                pending.wrote = False
                self.committed()

        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect._mailgate_health = self  # type: ignore[attr-defined]

        @event.listens_for(engine, "handle_error")
        def _failed(context: Any) -> None:
            if context.is_pre_ping:
                return  # the pool replaces the dead connection by itself
            exc = context.sqlalchemy_exception or context.original_exception
            if is_unavailable(exc) or context.is_disconnect:
                self.failed(exc)

    def committed(self) -> None:
        now = self.now()
        with self._lock:
            was_failing = self._ok is False
            run, since = self._failed_run, self._failed_since
            self._ok, self._at, self._last_ok_at, self._error = True, now, now, None
            self._failed_run, self._failed_since = 0, None
        if was_failing:
            log.warning(
                "database writes work again (%d failed in %.0f s)", run, now - (since or now)
            )

    def failed(self, exc: BaseException) -> None:
        """A write (or the connection it needed) failed for a reason of the database's."""
        now = self.now()
        reason = describe(exc)
        with self._lock:
            first = self._ok is not False
            self._ok, self._at, self._error = False, now, reason
            self._failures += 1
            self._failed_run += 1
            if first:
                self._failed_since = now
        self.on_failure()
        if first:
            log.error(
                "database writes fail: %s; requests that write are answered 503 with "
                "Retry-After until a write succeeds (logged once, not per request)",
                reason,
            )

    def probe(self, write: Callable[[], None]) -> None:
        """Run ``write`` (a small real commit, e.g. a heartbeat) when this process has no
        recent successful write to judge the write path by, at most every
        ``PROBE_SPACING_S``. Its outcome lands in ``state`` like any other commit's."""
        t = self.now()
        with self._lock:
            fresh = self._ok and self._last_ok_at is not None
            if fresh and t - (self._last_ok_at or t) < PROBE_AFTER_S:
                return
            if t - self._probed_at < PROBE_SPACING_S:
                return
            self._probed_at = t
        try:
            write()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if not isinstance(exc, sa_exc.DBAPIError):
                self.failed(exc)  # a raw driver error: the handle_error hook did not see it

    @property
    def state(self) -> WriteState:
        with self._lock:
            return WriteState(self._ok, self._at, self._last_ok_at, self._error, self._failures)
