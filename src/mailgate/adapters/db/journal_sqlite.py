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

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, literal_column, select, update

from mailgate.adapters.db.prepared import PreparedStatement, raw_sqlite
from mailgate.adapters.db.tables import Message, MessageAttempt, table_of
from mailgate.domain.messages import Status

_MESSAGES = table_of(Message)
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
_IDS: Any = select(literal_column("value")).select_from(func.json_each(bindparam("ids")))

_START = PreparedStatement(
    update(Message)
    .where(
        Message.id.in_(_IDS),
        Message.locked_by == bindparam("worker"),
        Message.status == Status.SENDING.value,
    )
    .values(attempt_started_at=bindparam("now"))
    .returning(Message.id)
)
_INSERT_ATTEMPTS = PreparedStatement(table_of(MessageAttempt).insert(), column_keys=ATTEMPT_KEYS)


def applies(conn: Connection) -> bool:
    return raw_sqlite(conn)


def start(conn: Connection, ids: Sequence[str], worker: str, now: datetime) -> frozenset[str]:
    """Mark the attempts of ``ids`` started (those this worker still holds, sending)."""
    rows = _START.rows(conn, {"ids": json.dumps(list(ids)), "worker": worker, "now": now})
    return frozenset(r[0] for r in rows)


def take(
    conn: Connection,
    statement: PreparedStatement,
    ids: Sequence[str],
    values: Mapping[str, Any],
) -> None:
    """The claim's update of ``ids`` (``statement``: the queue's, its ids through json_each)."""
    statement.rows(conn, {**values, "ids": json.dumps(list(ids))})


def claimed_rows(conn: Connection, statement: PreparedStatement, ids: Sequence[str]) -> list[Any]:
    """The claimed rows, by column name (``statement``: the queue's, its ids through
    json_each)."""
    return statement.named(conn, {"ids": json.dumps(list(ids))})


def by_ids(column: Any) -> Any:
    """``column IN (the ids given as one JSON parameter "ids")``."""
    return column.in_(_IDS)


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
