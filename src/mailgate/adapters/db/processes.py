"""The ``processes`` table: who works the database, and whether it is alive.

Every delivery worker writes its heartbeat here (``beat``) every few seconds; the API
process does when ``/healthz`` needs to prove the write path. A worker whose heartbeat is
older than ``dead_after`` is dead (SIGKILL, OOM, power loss): the next worker to look
(``dead_workers``, then ``SqlDeliveryQueue.heartbeat``) takes over its claimed messages at
once, instead of after their lease.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update

from mailgate.adapters.db.tables import Process


def beat(conn: Connection, process_id: str, kind: str, now: datetime) -> bool:
    """Renew ``process_id``'s heartbeat, registering it if needed. False when it had to be
    registered again: another process found it dead meanwhile and took over its leases."""
    renewed = conn.execute(
        update(Process).where(Process.id == process_id).values(heartbeat_at=now)
    ).rowcount
    if renewed:
        return True
    conn.execute(
        insert(Process).values(
            id=process_id,
            kind=kind,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=now,
            heartbeat_at=now,
        )
    )
    return False


def leave(conn: Connection, process_id: str) -> None:
    """A process that stops cleanly says so (its leases were given back already)."""
    conn.execute(delete(Process).where(Process.id == process_id))


def dead_workers(conn: Connection, now: datetime, dead_after: timedelta) -> list[str]:
    """Forget every process whose heartbeat is older than ``dead_after``; return the ids of
    the workers among them (whose leases the caller takes over)."""
    gone = conn.execute(
        select(Process.id, Process.kind).where(Process.heartbeat_at < now - dead_after)
    ).all()
    if not gone:
        return []
    conn.execute(delete(Process).where(Process.id.in_([pid for pid, _k in gone])))
    return [pid for pid, kind in gone if kind == "worker"]
