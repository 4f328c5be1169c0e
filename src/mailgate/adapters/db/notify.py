"""Waking delivery workers when mail becomes ready, without polling an idle queue.

In the same process an ``asyncio.Event`` per waiting worker is set after the committing
transaction; across processes on PostgreSQL the transaction also sends ``NOTIFY``, which
PostgreSQL delivers only on commit (https://www.postgresql.org/docs/current/sql-notify.html).
SQLite has nothing like it, and all its processes are on one machine: there each process
with workers binds a Unix datagram socket in a directory named after the database file, and
a commit that made mail ready sends a byte to each (``LocalSignal``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.orm import Session, sessionmaker

CHANNEL = "mailgate_outbox"
_FLAG = "mailgate_outbox_wake"
log = logging.getLogger("mailgate.notify")


class LocalSignal:
    """Wake-ups between processes on one machine, for SQLite.

    Listeners bind ``<dir>/<pid>-<random>.sock``; ``send`` writes one byte to each without
    blocking (a full socket buffer means that listener has a wake-up pending anyway) and
    removes sockets nobody listens on any more (a process that was killed).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)

    @classmethod
    def for_database(cls, db_path: Path) -> LocalSignal | None:
        # Socket paths must stay under ~100 bytes: a short directory in the temp dir, named
        # by the database file, private to this user.
        digest = hashlib.sha256(str(db_path.resolve()).encode()).hexdigest()[:16]
        directory = Path(tempfile.gettempdir()) / f"mailgate-{digest}"
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            if directory.stat().st_uid != os.getuid():
                log.warning("%s belongs to another user: wake-ups between processes off", directory)
                return None
        except OSError as exc:
            log.warning("no wake-ups between processes (%s); workers poll", exc)
            return None
        return cls(directory)

    def send(self) -> None:
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            if not entry.name.endswith(".sock"):
                continue
            try:
                self._out.sendto(b"!", entry.path)
            except BlockingIOError:
                pass
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except OSError:
                pass

    def listen(
        self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_signal`` in ``loop`` on every wake-up; returns the function that stops."""
        path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(path))

        def readable() -> None:
            with contextlib.suppress(OSError):
                while sock.recv(64):
                    pass
            on_signal()

        loop.add_reader(sock.fileno(), readable)

        def stop() -> None:
            loop.remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(OSError):
                path.unlink()

        return stop


class Wakeup:
    """Thread-safe "new mail" signal for workers running in event loops of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.local: LocalSignal | None = None
        """Set on SQLite: also wake workers of other processes."""

    def register(self) -> asyncio.Event:
        ev = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), ev))
        return ev

    def unregister(self, ev: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not ev}

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, ev in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ev.set)
        if self.local is not None:
            self.local.send()


def mark_ready(db: Session) -> None:
    """Call inside a transaction that made mail ready to send: workers wake after commit."""
    db.info[_FLAG] = True
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def notify_other_processes(conn: Connection) -> None:
    """``mark_ready`` for work on a plain connection: PostgreSQL's NOTIFY, sent on commit.
    The caller wakes this process's workers (``Wakeup.notify``) after the commit."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def install(sessions: sessionmaker[Session], wakeup: Wakeup) -> None:
    @event.listens_for(sessions, "after_commit")
    def _after_commit(session: Session) -> None:
        if session.info.pop(_FLAG, False):
            wakeup.notify()

    @event.listens_for(sessions, "after_rollback")
    def _after_rollback(session: Session) -> None:
        session.info.pop(_FLAG, None)


async def listen_postgres(url: str, wakeup_event: asyncio.Event, stop: asyncio.Event) -> None:
    """Set ``wakeup_event`` on every NOTIFY from another process; reconnect on errors."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            conn: Any = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                wakeup_event.set()  # anything sent while we were not listening
                gen = conn.notifies()
                async for _n in gen:
                    wakeup_event.set()
                    if stop.is_set():
                        break
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database went away; the poll fallback covers the gap, then listen again.
            await asyncio.sleep(1.0)
