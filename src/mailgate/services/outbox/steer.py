"""Steering messages: hold, release, cancel and retry, one message or many.

Which action is legal from which status is ``domain.messages.refusal``; here it is applied
to rows locked ``FOR UPDATE``, so a worker or a second request cannot change a message
between the check and the change. Workers are woken when mail becomes ready.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.adapters.db.events import MessageEvent, emit_for_messages
from mailgate.adapters.db.notify import mark_ready
from mailgate.adapters.db.tables import Message
from mailgate.domain.clock import Clock
from mailgate.domain.errors import Conflict
from mailgate.domain.events import EventType
from mailgate.domain.messages import ALLOWED_FROM, Action, Status, refusal
from mailgate.schemas.message import BulkIn
from mailgate.schemas.out.message import BulkOut, BulkSkipOut
from mailgate.services.outbox.options import Owner
from mailgate.services.outbox.query import MESSAGE_ID, get

BULK_CHUNK = 500
# Steering that ends in a status webhooks hear about.
_EVENT_OF_ACTION = {Action.HOLD: EventType.MESSAGE_HELD, Action.CANCEL: EventType.MESSAGE_CANCELLED}


@dataclass(frozen=True)
class BulkResult:
    changed: list[str]
    skipped: list[dict[str, str]]

    def out(self) -> BulkOut:
        return BulkOut(
            changed=len(self.changed),
            ids=self.changed,
            skipped=[BulkSkipOut(id=s["id"], reason=s["reason"]) for s in self.skipped],
        )


class Steering:
    def __init__(self, clock: Clock, retry_max_age: timedelta) -> None:
        self.clock = clock
        self.retry_max_age = retry_max_age

    def act(self, db: Session, tenant_id: int, message_id: str, action: Action) -> Message:
        row = get(db, tenant_id, Owner("", None), message_id)
        # Lock the row: a worker or a second request must not change it under us.
        db.refresh(row, with_for_update=True)
        why = refusal(action, Status(row.status), in_attempt=_in_attempt(row))
        if why is not None:
            raise Conflict(why)
        self._apply(row, action)
        if row.status == Status.QUEUED:
            mark_ready(db)
        db.flush()
        self._emit(db, tenant_id, action, [row.id])
        return row

    def _emit(self, db: Session, tenant_id: int, action: Action, ids: list[str]) -> None:
        """The webhook events of a change, in its transaction (after the flush)."""
        event = _EVENT_OF_ACTION.get(action)
        if event is not None and ids:
            events = [MessageEvent(i, event, tenant_id=tenant_id) for i in ids]
            emit_for_messages(db.connection(), events, now=self.clock())

    def bulk(
        self,
        db: Session,
        tenant_id: int,
        action: Action,
        body: BulkIn,
        progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """``action`` on the messages ``body`` selects, ``BULK_CHUNK`` rows at a time, each
        chunk locked, changed and flushed; ``progress`` is told each chunk's size."""
        if body.ids is not None:
            result = self._by_ids(db, tenant_id, action, body.ids, progress)
        else:
            result = self._by_filter(db, tenant_id, action, body, progress)
        if result.changed and action in (Action.RELEASE, Action.RETRY):
            mark_ready(db)
        return result

    def _by_ids(
        self,
        db: Session,
        tenant_id: int,
        action: Action,
        ids: list[str],
        progress: Callable[[int], None] | None,
    ) -> BulkResult:
        """Each id is changed or skipped with the reason (unknown, or not legal now)."""
        changed: list[str] = []
        skipped: list[dict[str, str]] = []
        for chunk in _chunks(ids, BULK_CHUNK):
            # Only well-formed ids reach the database (PostgreSQL refuses NUL in text).
            wellformed = [i for i in chunk if MESSAGE_ID.match(i)]
            found = {
                r.id: r
                for r in db.scalars(
                    select(Message)
                    .where(Message.tenant_id == tenant_id, Message.id.in_(wellformed))
                    .with_for_update()
                )
            }
            done = len(changed)
            for message_id in chunk:
                row = found.get(message_id) if MESSAGE_ID.match(message_id) else None
                if row is None:
                    skipped.append({"id": message_id, "reason": "not found"})
                    continue
                why = refusal(action, Status(row.status), in_attempt=_in_attempt(row))
                if why is not None:
                    skipped.append({"id": message_id, "reason": why})
                    continue
                self._apply(row, action)
                changed.append(row.id)
            db.flush()
            self._emit(db, tenant_id, action, changed[done:])
            if progress:
                progress(len(chunk))
        return BulkResult(changed, skipped)

    def _by_filter(
        self,
        db: Session,
        tenant_id: int,
        action: Action,
        body: BulkIn,
        progress: Callable[[int], None] | None,
    ) -> BulkResult:
        """Every message the action applies to, of ``body.status`` and ``body.server`` if
        given; a status the action never applies to is a conflict, not an empty result."""
        statuses = [s.value for s in ALLOWED_FROM[action]]
        if body.status is not None:
            if body.status not in ALLOWED_FROM[action]:
                raise Conflict(refusal(action, body.status) or "")
            statuses = [body.status.value]
        changed: list[str] = []
        last = ""
        while True:
            stmt = select(Message).where(
                Message.tenant_id == tenant_id,
                Message.status.in_(statuses),
                Message.id > last,
            )
            if body.server is not None:
                stmt = stmt.where(Message.server_name == body.server)
            rows = list(db.scalars(stmt.order_by(Message.id).limit(BULK_CHUNK).with_for_update()))
            if not rows:
                break
            for row in rows:
                self._apply(row, action)
                changed.append(row.id)
            last = rows[-1].id
            db.flush()
            self._emit(db, tenant_id, action, [r.id for r in rows])
            if progress:
                progress(len(rows))
        return BulkResult(changed, [])

    def _apply(self, row: Message, action: Action) -> None:
        now = self.clock()
        if action is Action.CANCEL:
            row.status = Status.CANCELLED.value
            row.next_attempt_at = None
        elif action is Action.HOLD:
            row.status = Status.HELD.value
            row.next_attempt_at = None
        elif action is Action.RELEASE:
            start = max(row.send_at or now, now)
            row.status = (Status.SCHEDULED if start > now else Status.QUEUED).value
            row.next_attempt_at = start
            row.expires_at = max(row.expires_at, start + self.retry_max_age)
        else:  # retry: try now, with a fresh window of retries
            row.status = Status.QUEUED.value
            row.next_attempt_at = now
            row.expires_at = max(row.expires_at, now + self.retry_max_age)
            if row.recipient_status:
                # Recipients refused before get another chance; delivered ones stay done.
                row.recipient_status = {
                    r: (v if v.get("status") == "delivered" else {**v, "status": "pending"})
                    for r, v in row.recipient_status.items()
                }
        row.locked_by = None
        row.locked_until = None
        row.updated_at = now


def _in_attempt(row: Message) -> bool:
    """The message is in an attempt right now (a worker marked it started): too late to
    stop it. A claimed message not started yet can be (the worker will not send it)."""
    return row.status == Status.SENDING.value and row.attempt_started_at is not None


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
