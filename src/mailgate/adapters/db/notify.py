"""Waking delivery workers when mail becomes ready, without polling an idle queue.

In the same process an ``asyncio.Event`` per waiting worker is set after the committing
transaction; across processes on PostgreSQL the transaction also sends ``NOTIFY``, which
PostgreSQL delivers only on commit (https://www.postgresql.org/docs/current/sql-notify.html).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

CHANNEL = "mailgate_outbox"
_FLAG = "mailgate_outbox_wake"


class Wakeup:
    """Thread-safe "new mail" signal for workers running in event loops of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

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


def mark_ready(db: Session) -> None:
    """Call inside a transaction that made mail ready to send: workers wake after commit."""
    db.info[_FLAG] = True
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


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
