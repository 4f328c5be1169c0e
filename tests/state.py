"""What "stored data is unchanged" means in tests: every row of every table, compared.

Sessions and the login throttle change on every sign-in, and ``api_keys.last_used_at`` on every
use; they are bookkeeping, not data a request could corrupt, so they are left out.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mailgate.adapters.db.tables import Base
from mailgate.bootstrap import Container

_SKIP_TABLES = {"auth_sessions", "login_throttle"}
_SKIP_COLUMNS = {("api_keys", "last_used_at")}


def snapshot(container: Container) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with container.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name in _SKIP_TABLES:
                continue
            cols = [c for c in table.columns if (table.name, c.name) not in _SKIP_COLUMNS]
            rows = conn.execute(select(*cols).order_by(*table.primary_key.columns)).mappings()
            out[table.name] = [dict(r) for r in rows]
    return out


def diff(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]) -> str:
    """A short description of what changed ('' when nothing did)."""
    changed = []
    for name in before:
        if before[name] != after[name]:
            changed.append(f"{name}: {len(before[name])} -> {len(after[name])} rows")
    return "; ".join(changed)
