"""Engine and session factory for SQLite and PostgreSQL, and the migration runner."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "mailgate_read_only"
NO_WAIT = "mailgate_no_wait"
DURABLE = "mailgate_durable"
LOCK_WAIT_S = "mailgate_lock_wait_s"
"""SQLite: how long BEGIN IMMEDIATE waits for the write lock (default: the busy timeout)."""
BUSY_TIMEOUT_MS = 30000


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while the worker writes; foreign keys are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # BEGIN IMMEDIATE takes the write lock up front, so two writers queue up on the
            # busy timeout instead of failing with "database is locked" on lock upgrade.
            # Read-only units of work (``read_only_sessions``) must not queue behind writers.
            options = conn.get_execution_options()
            if options.get(READ_ONLY):
                # No transaction at all: each SELECT reads the last commit by itself, and
                # the BEGIN/ROLLBACK pair cost more than the reads of a submission.
                return
            # synchronous=FULL for the transactions that must survive a power loss (the
            # submissions: ``durable``), NORMAL for the rest; it applies at commit.
            sync = "FULL" if options.get(DURABLE) else "NORMAL"
            if conn.info.get(DURABLE) != sync:
                conn.connection.driver_connection.execute(f"PRAGMA synchronous={sync}")
                conn.info[DURABLE] = sync
            if options.get(NO_WAIT):
                # One try: "database is locked" if another writer holds the lock. For a
                # connection whose busy timeout is 0 (the caller's), so nothing waits.
                conn.connection.driver_connection.execute("BEGIN IMMEDIATE")
            else:
                wait_s = options.get(LOCK_WAIT_S, BUSY_TIMEOUT_MS / 1000)
                _begin_immediate(conn.connection.driver_connection, wait_s)

        # Let SQLAlchemy's "begin" event issue the BEGIN instead of pysqlite.
        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    # The pool keeps up to pool_size connections; an overflow connection is closed when it
    # comes back. serve's submissions read in a pool of threads: at 16 concurrent requests
    # the earlier 10 kept connections opened and closed 350-400 PostgreSQL connections (a
    # backend process each) per 5,000 submissions, 20 keep it at the ~35 of start-up. The
    # most a process may open stays 30.
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=10)


def _begin_immediate(raw: sqlite3.Connection, timeout_s: float) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in short steps.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries: a writer
    that finds the lock taken for a moment (another process's batch) sleeps far longer than
    the lock is held, and every request waiting for that writer waits with it. Here the
    waits start at 0.2 ms and grow to 5 ms; the handler is off only for this statement.
    """
    raw.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout_s
        delay = 0.0002
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.005)
    finally:
        raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def loop_writer(engine: Engine) -> Connection:
    """A SQLite connection for writes on the event loop, kept by its user: it never waits
    for the write lock (busy timeout 0: the caller tries again, or hands the write to a
    thread) and never checkpoints on commit (file I/O and an fsync; a thread or another
    connection does). The settings stay with it while it stays checked out."""
    conn = engine.connect().execution_options(**{NO_WAIT: True})
    raw: Any = conn.connection.driver_connection
    raw.execute("PRAGMA wal_autocheckpoint=0")
    raw.execute("PRAGMA busy_timeout=0")
    return conn


def discard(conn: Connection | None) -> None:
    """Drop a kept connection that failed (or may be in an unknown state)."""
    if conn is not None:
        with suppress(Exception):
            conn.invalidate()
            conn.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def durable(engine: Engine) -> Engine:
    """The engine for commits that must survive an OS crash or power loss, not only a crash
    of the process: on SQLite (WAL mode) ``synchronous=FULL``, an fsync of the WAL at each
    commit (other transactions use NORMAL: fsync at checkpoints only). On PostgreSQL every
    commit is flushed already (``synchronous_commit=on``, the server's default)."""
    return engine.execution_options(**{DURABLE: True})


def read_only(engine: Engine) -> Engine:
    """The engine for work that only reads. On SQLite it opens no transaction (every
    statement reads the last commit, WAL readers never wait for the write lock), so a unit
    of work on it sees no single snapshot and must never write. On PostgreSQL nothing
    changes."""
    return engine.execution_options(**{READ_ONLY: True})


class KeptReads:
    """Read-only connections for the submission's reads on the event loop: on SQLite one
    connection per thread is kept instead of being checked out of the pool and back in for
    each request, which cost more than the reads themselves (50 -> 25 us per request,
    measured). After each use its SQLAlchemy transaction is ended (no BEGIN was ever sent
    on a read-only SQLite connection, see ``read_only``), so no read snapshot outlives a
    request; a connection that failed is dropped. Elsewhere (PostgreSQL, whose reads run
    in a pool of threads; a nested use) it is the pool's connection as usual."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.keep = engine.dialect.name == "sqlite"
        self._local = threading.local()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        local = self._local
        if not self.keep or getattr(local, "busy", False):
            with self.engine.connect() as fresh:
                yield fresh
            return
        kept: Connection | None = getattr(local, "conn", None)
        if kept is None or kept.closed or kept.invalidated:
            kept = local.conn = self.engine.connect()
        conn = kept
        local.busy = True
        ok = False
        try:
            yield conn
            ok = True
        finally:
            local.busy = False
            try:
                conn.rollback()
            except Exception:
                ok = False
            if not ok or conn.invalidated:
                local.conn = None
                with suppress(Exception):
                    conn.close()


def alembic_config(engine: Engine) -> AlembicConfig:
    # Imported here: Alembic takes about a second to import, which every CLI command paid.
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(engine), "head")
