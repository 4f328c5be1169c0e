"""The delivery queue's hot statements on SQLite, run on the DBAPI connection
(``adapters/db/prepared.py``): the claim's (take the rows, read them), the started marks,
each message's next state and the attempt log - run by every worker for every message.

Through ``Connection.execute`` these cost more in SQLAlchemy than in SQLite (its execution
context and per-row parameter processing: 14 % of a worker's CPU in py-spy, benchmark row
(b)); here each is compiled once and runs as one ``execute``/``executemany`` with the same
type processors. A list of ids goes in as one JSON parameter read by ``json_each`` (a
statement with an expanding ``IN`` would be compiled anew for each length).
``tests/integration/test_journal_sqlite.py`` pins the rows written to SQLAlchemy's path,
which PostgreSQL keeps (``prepared.RAW`` False turns this off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, update

from mailgate.adapters.db.prepared import PreparedStatement, as_json, in_json
from mailgate.adapters.db.tables import Message, MessageAttempt, table_of
from mailgate.domain.messages import Status

ATTEMPT_KEYS = (
    "message_id",
    "at",
    "outcome",
    "smtp_code",
    "smtp_response",
    "ms",
    "worker",
    "recipients",
    "possibly_delivered",
)

_START = PreparedStatement(
    update(Message)
    .where(
        in_json(Message.id),
        Message.locked_by == bindparam("worker"),
        Message.status == Status.SENDING.value,
    )
    .values(attempt_started_at=bindparam("now"))
    .returning(Message.id)
)
_INSERT_ATTEMPTS = PreparedStatement(table_of(MessageAttempt).insert(), column_keys=ATTEMPT_KEYS)


def start(conn: Connection, ids: Sequence[str], worker: str, now: datetime) -> frozenset[str]:
    """Mark the attempts of ``ids`` started (those this worker still holds, sending)."""
    rows = _START.rows(conn, {"ids": as_json(ids), "worker": worker, "now": now})
    return frozenset(r[0] for r in rows)


class Recording:
    """``record``: each message's next state (``update``, the queue's ``_RECORD``) and its
    attempt (a row of ``message_attempts``)."""

    def __init__(self, update_statement: Any) -> None:
        self._update = PreparedStatement(update_statement)

    def record(
        self,
        conn: Connection,
        updates: Sequence[Mapping[str, Any]],
        attempts: Sequence[Mapping[str, Any]],
    ) -> None:
        self._update.many(conn, updates)
        _INSERT_ATTEMPTS.many(conn, attempts)
