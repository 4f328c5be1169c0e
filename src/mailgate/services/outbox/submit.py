"""Accepting a message: a JSON request or a complete MIME message, stored durably.

A message and its queue state are one row (``messages``) plus its bytes
(``message_contents``). Two ways in:

- ``Submitter.submit`` writes them in the caller's transaction (an idempotency key is
  checked and taken there, atomically);
- ``Submitter.prepare`` does everything but the insert from reads only, and
  ``store_many`` inserts many requests' rows in one transaction: the API's group commit
  (``adapters.db.batch_writer``), for submissions without a key.

Either way, the ``202`` is answered after the commit: a crash afterwards loses nothing.
This is the gateway's hot path; its costs are measured (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgate.adapters.db.events import MessageEvent, emit_for_messages
from mailgate.adapters.db.notify import mark_ready, notify_other_processes
from mailgate.adapters.db.prepared import PreparedStatement, raw_sqlite
from mailgate.adapters.db.tables import Message, MessageContent, table_of
from mailgate.domain.clock import Clock
from mailgate.domain.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from mailgate.domain.events import EventType
from mailgate.domain.messages import PRIORITY_RANK, Status, initial_status, new_message_id
from mailgate.schemas.common import check_send_at
from mailgate.schemas.message import MessageIn
from mailgate.services.email_servers import EmailServers, ServerRef
from mailgate.services.outbox.mime import BuiltMessage, build_mime, prepare_raw
from mailgate.services.outbox.options import Owner, SubmitOptions

_MESSAGES = table_of(Message)
_CONTENTS = table_of(MessageContent)
ROW_KEYS = (
    "id",
    "tenant_id",
    "server_id",
    "server_name",
    "status",
    "priority",
    "mail_from",
    "rcpt_to",
    "subject",
    "message_id_header",
    "size_bytes",
    "idempotency_key",
    "created_by",
    "api_key_id",
    "created_at",
    "updated_at",
    "send_at",
    "next_attempt_at",
    "expires_at",
    "attempt_count",
    "meta",
    "source",
)
"""The columns of a submission's row (``Submitter._row_values``)."""
_INSERT_MESSAGES = PreparedStatement(_MESSAGES.insert(), column_keys=ROW_KEYS)
_INSERT_CONTENTS = PreparedStatement(_CONTENTS.insert(), column_keys=("message_id", "raw"))


@dataclass(frozen=True)
class Submitted:
    message: Message
    replayed: bool
    """The idempotency key had been used: ``message`` is the first submission's."""


@dataclass(frozen=True)
class Prepared:
    """A submission ready to insert: the ``messages`` row and the message's bytes."""

    values: dict[str, Any]
    raw: bytes


class Submitter:
    def __init__(
        self,
        servers: EmailServers,
        clock: Clock,
        max_message_bytes: int,
        retry_max_age: timedelta,
    ) -> None:
        self.servers = servers
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.retry_max_age = retry_max_age

    def submit(
        self,
        db: Session,
        tenant_id: int,
        owner: Owner,
        message: MessageIn | bytes,
        options: SubmitOptions,
    ) -> Submitted:
        """Store ``message`` (a JSON request, or a complete MIME message) in ``db``'s
        transaction. A JSON request's options are ``SubmitOptions.of(message)``."""
        key = options.idempotency_key
        if key is not None and (first := self._replay(db, tenant_id, owner, key)) is not None:
            return Submitted(first, True)
        if isinstance(message, bytes):
            # Check the size before parsing: the configuration's limit applies after that.
            self._check_size(len(message), None)
        server = self._server(db.connection(), tenant_id, options.server)
        _end_reading(db)
        built = self._build(server, message, options.rcpt_to)
        values = self._row_values(tenant_id, owner, server, built, options)
        return self._store(db, tenant_id, owner, values, built.raw)

    def prepare(
        self,
        conn: Connection,
        tenant_id: int,
        owner: Owner,
        message: MessageIn | bytes,
        options: SubmitOptions,
        *,
        server: ServerRef | None = None,
    ) -> Prepared:
        """Everything a submission without an idempotency key needs, from reads only (a
        read-only connection will do): the rows to insert, for ``store_many``. ``server`` is
        the e-mail server if the caller has read it already."""
        if options.idempotency_key is not None:
            # Group commit cannot take a key atomically: such a request goes through submit.
            raise ValueError("a submission with an idempotency key goes through submit()")
        if isinstance(message, bytes):
            self._check_size(len(message), None)
        if server is None:
            server = self._server(conn, tenant_id, options.server)
        built = self._build(server, message, options.rcpt_to)
        return Prepared(self._row_values(tenant_id, owner, server, built, options), built.raw)

    def _server(self, conn: Connection, tenant_id: int, name: str | None) -> ServerRef:
        """The named (or default) e-mail server; an unknown one is the field's error."""
        try:
            return self.servers.ref(conn, tenant_id, name)
        except NotFound as exc:
            raise ValidationFailed.one("server", exc.detail) from exc

    def _build(
        self,
        server: ServerRef,
        message: MessageIn | bytes,
        rcpt_to: tuple[str, ...] | None = None,
    ) -> BuiltMessage:
        """The message as MIME with the server's defaults, within its size limit."""
        cfg = self.servers.config_of(server)
        now = self.clock()
        if isinstance(message, bytes):
            built = prepare_raw(message, cfg.message_defaults, now, rcpt_to=rcpt_to)
        else:
            built = build_mime(message, cfg.message_defaults, now)
        self._check_size(len(built.raw), cfg.limits.max_message_bytes)
        return built

    def _check_size(self, size: int, server_limit: int | None) -> None:
        limit = self.max_message_bytes
        if server_limit is not None:
            limit = min(limit, server_limit)
        if size > limit:
            raise PayloadTooLarge(
                f"the message is {size} bytes; the limit for this server is {limit} bytes"
            )

    def _replay(self, db: Session, tenant_id: int, owner: Owner, key: str) -> Message | None:
        first = db.scalar(
            select(Message).where(Message.tenant_id == tenant_id, Message.idempotency_key == key)
        )
        if (
            first is not None
            and owner.own_only
            and not owner.owns(first.created_by, first.api_key_id)
        ):
            raise Conflict("this idempotency key was used by another client")
        return first

    def _row_values(
        self,
        tenant_id: int,
        owner: Owner,
        server: ServerRef,
        built: BuiltMessage,
        options: SubmitOptions,
    ) -> dict[str, Any]:
        now = self.clock()
        hold, send_at = options.hold, options.send_at
        if send_at is not None:
            try:  # checked by the schemas; a caller that built options itself is checked here
                check_send_at(send_at)
            except ValueError as exc:
                raise ValidationFailed.one("send_at", str(exc)) from None
        return {
            "id": new_message_id(int(now.timestamp() * 1000)),
            "tenant_id": tenant_id,
            "server_id": server.id,
            "server_name": server.name,
            "status": initial_status(hold, send_at, now).value,
            "priority": PRIORITY_RANK[options.priority],
            "mail_from": built.mail_from,
            "rcpt_to": built.rcpt_to,
            "subject": built.subject,
            "message_id_header": built.message_id,
            "size_bytes": len(built.raw),
            "idempotency_key": options.idempotency_key,
            "created_by": owner.name,
            "api_key_id": owner.api_key_id,
            "created_at": now,
            "updated_at": now,
            "send_at": send_at,
            "next_attempt_at": None if hold else max(send_at or now, now),
            "expires_at": max(send_at or now, now) + self.retry_max_age,
            "attempt_count": 0,
            "meta": dict(options.metadata) if options.metadata else None,
            "source": options.source,
        }

    def _store(
        self, db: Session, tenant_id: int, owner: Owner, values: dict[str, Any], raw: bytes
    ) -> Submitted:
        row = Message(**values)
        status = Status(row.status)
        content = MessageContent(message_id=row.id, raw=raw)
        key = row.idempotency_key
        if key is None:
            # Nothing to race for, so no savepoint: it cost about a sixth of the submission's
            # CPU (submit 3.7 -> 3.1 ms per message, time.process_time over 1,500).
            db.add(row)
            db.flush()
            db.add(content)
            db.flush()
            if status is Status.QUEUED:
                mark_ready(db)
            _emit_held(db.connection(), [values])
            return Submitted(row, False)
        try:
            with db.begin_nested():
                db.add(row)
                db.flush()
                db.add(content)
                db.flush()
        except IntegrityError:
            # A concurrent request with the same idempotency key won the race.
            first = self._replay(db, tenant_id, owner, key)
            if first is None:
                raise
            return Submitted(first, True)
        if status is Status.QUEUED:
            mark_ready(db)
        _emit_held(db.connection(), [values])
        return Submitted(row, False)


def store_many(conn: Connection, items: Sequence[Prepared]) -> bool:
    """Insert prepared submissions, one statement per table, in the caller's transaction
    (the batch writer's group commit). Returns whether mail became ready to send: then the
    caller wakes this process's workers after the commit (other processes' are notified
    with the commit)."""
    contents = [{"message_id": p.values["id"], "raw": p.raw} for p in items]
    if raw_sqlite(conn):
        # SQLite: on the DBAPI connection (adapters/db/prepared.py): SQLAlchemy's execution
        # of the two inserts was 10 % of a submission's CPU.
        _INSERT_MESSAGES.many(conn, [p.values for p in items])
        _INSERT_CONTENTS.many(conn, contents)
    else:
        conn.execute(_MESSAGES.insert(), [p.values for p in items])
        conn.execute(_CONTENTS.insert(), contents)
    ready = any(p.values["status"] == Status.QUEUED.value for p in items)
    if ready:
        notify_other_processes(conn)
    _emit_held(conn, [p.values for p in items])
    return ready


def _emit_held(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Mail submitted with ``hold`` is ``message.held`` for webhooks, in the same
    transaction; other submissions cause no event (and cost nothing here)."""
    held = [
        MessageEvent(r["id"], EventType.MESSAGE_HELD, tenant_id=r["tenant_id"])
        for r in rows
        if r["status"] == Status.HELD.value
    ]
    if held:
        emit_for_messages(conn, held, now=rows[0]["created_at"])


def _end_reading(db: Session) -> None:
    """End a transaction that only read, before the slow part (building MIME).

    On SQLite every transaction holds the database's write lock (``BEGIN IMMEDIATE``), so
    building a message inside it would make concurrent submissions wait for each other. The
    insert then runs in a short transaction of its own; a repeated idempotency key is still
    caught there by the unique constraint.
    """
    if not (db.new or db.dirty or db.deleted):
        db.commit()
