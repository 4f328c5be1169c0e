"""Locks shared by every mailgate process on one database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

# Any constant works; it only has to be the same in every mailgate process.
_STARTUP_LOCK_ID = 0x6D61696C67617465 & 0x7FFFFFFFFFFFFFFF  # "mailgate"


@contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """Serialize migration and first start across processes sharing one PostgreSQL database
    (API replicas and workers started together would race Alembic and the admin's creation).
    A session-level advisory lock is released when its connection closes, also on a crash.
    SQLite is one process by design; its BEGIN IMMEDIATE already serializes writers."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _STARTUP_LOCK_ID})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _STARTUP_LOCK_ID})
            conn.commit()
