"""Delivering the event outbox to webhook endpoints: at least once, in order per message,
with backoff for 24 hours, each receiver isolated from the others and from mail.

Rows (one per event and endpoint, ``adapters/db/events.py``) are claimed like messages: with
a lease (``next_attempt_at`` moves to the lease's end and ``locked_by`` names the holder),
``SKIP LOCKED`` on PostgreSQL, so any number of processes may dispatch. A process killed
mid-POST leaves its rows to be claimed again when the lease ends (the receiver may then see
an event twice, with the same ``webhook-id``).

- Order: an event about a message is not claimed while an earlier event about the same
  message waits for the same endpoint.
- Isolation: at most ``per_endpoint`` POSTs to one endpoint at a time, and only one while
  its last answer was a failure (for ``failing_for``): a slow or dead receiver ties up one
  slot of ``max_in_flight``, never the others' nor the delivery workers'; every POST has a
  total deadline (``WebhookSender``); the database is touched only before and after the
  POST, never during it, in short transactions of their own (in a thread: no I/O of the
  event loop waits for the database).
- Failures: any answer but 2xx, no answer in time, or a refused destination is retried at
  30 s, 1, 2, 4 ... minutes (at most an hour apart) until the event is 24 hours old, then
  the row is ``failed``. Each attempt is logged (``webhook_attempts``, the deliveries log).
  A ``webhook.test`` event is tried once.
- A disabled endpoint gets no new events; those already waiting for it stay, and are
  given up 24 hours after they happened; finished rows older than ``keep`` are deleted
  with their attempts, now and then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.tables import WebhookAttempt, WebhookEndpoint, WebhookEvent, table_of
from mailgate.domain.clock import Clock
from mailgate.domain.errors import SecretKeyError
from mailgate.domain.events import (
    RETRY_FOR,
    DeliveryState,
    EventType,
    WebhookResponse,
    next_try,
)
from mailgate.ports import SecretCipher, WebhookSender
from mailgate.services.events.webhooks import secret_context

log = logging.getLogger("mailgate.webhooks")

_E = table_of(WebhookEvent)
_EARLIER = _E.alias("earlier")
_ENDPOINTS = table_of(WebhookEndpoint)
_PENDING = DeliveryState.PENDING.value


@dataclass(frozen=True)
class Job:
    """A claimed event row, ready to POST."""

    row_id: int
    endpoint_id: str
    url: str
    secret: str
    event_id: str
    type: str
    body: bytes
    created_at: datetime
    attempts: int


class WebhookDispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        sender: WebhookSender,
        cipher: SecretCipher,
        clock: Clock,
        worker_id: str,
        *,
        lease: timedelta = timedelta(seconds=60),
        batch: int = 100,
        per_endpoint: int = 4,
        max_in_flight: int = 256,
        failing_for: float = 60.0,
        poll_s: float = 1.0,
        keep: timedelta = timedelta(days=7),
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.cipher = cipher
        self.clock = clock
        self.id = worker_id
        self.lease = lease
        self.batch = batch
        self.per_endpoint = per_endpoint
        self.max_in_flight = max_in_flight
        self.failing_for = failing_for
        self._failing: dict[str, float] = {}
        """Endpoints whose last attempt failed, and until when (monotonic) they get one slot."""
        self.poll_s = poll_s
        self.keep = keep
        self.delivered = 0
        self.failed_attempts = 0
        self._pruned_at = 0.0

    # ---- the database, before and after a POST (short transactions, in a thread) ----------

    def _slots(self, endpoint_id: str) -> int:
        """How many POSTs to ``endpoint_id`` may be in flight: one while it is failing."""
        until = self._failing.get(endpoint_id)
        if until is None:
            return self.per_endpoint
        if until < time.monotonic():
            del self._failing[endpoint_id]
            return self.per_endpoint
        return 1

    def claim(
        self,
        busy: Mapping[str, int] | None = None,
        limit: int | None = None,
        done: Sequence[tuple[Job, WebhookResponse]] = (),
    ) -> list[Job]:
        """Take due rows: at most ``per_endpoint`` in flight per endpoint (``busy`` counts
        what this process already has in flight), none that must wait for an earlier event
        of the same message. ``done``: POSTs that ended, recorded first in the same
        transaction (one commit - on SQLite one fsync - for both)."""
        busy = dict(busy or {})
        limit = self.batch if limit is None else limit
        now = self.clock()
        if limit <= 0:
            if done:
                self.finish_many(list(done))
            return []
        earlier = exists().where(
            _EARLIER.c.endpoint_id == _E.c.endpoint_id,
            _EARLIER.c.message_id == _E.c.message_id,
            _EARLIER.c.status == _PENDING,
            _EARLIER.c.id < _E.c.id,
        )
        candidates = (
            select(_E.c.id, _E.c.endpoint_id)
            .join(_ENDPOINTS, _ENDPOINTS.c.id == _E.c.endpoint_id)
            .where(
                _E.c.status == _PENDING,
                _E.c.next_attempt_at <= now,
                or_(_ENDPOINTS.c.enabled.is_(True), _E.c.type == EventType.WEBHOOK_TEST.value),
                or_(_E.c.message_id.is_(None), ~earlier),
            )
            .order_by(_E.c.next_attempt_at, _E.c.id)
            .limit(limit * 4)
            .with_for_update(skip_locked=True, of=_E)
        )
        with self.sessions.begin() as db:
            for job, response in done:
                self._finish_in(db, job, response, self.id, now)
            taken: list[int] = []
            for row_id, endpoint_id in db.execute(candidates).all():
                if busy.get(endpoint_id, 0) >= self._slots(endpoint_id):
                    continue
                busy[endpoint_id] = busy.get(endpoint_id, 0) + 1
                taken.append(row_id)
                if len(taken) >= limit:
                    break
            if not taken:
                return []
            db.execute(
                update(_E)
                .where(_E.c.id.in_(taken))
                .values(next_attempt_at=now + self.lease, locked_by=self.id)
            )
            rows = db.execute(
                select(
                    _E.c.id,
                    _E.c.endpoint_id,
                    _E.c.event_id,
                    _E.c.type,
                    _E.c.payload,
                    _E.c.created_at,
                    _E.c.attempts,
                    _ENDPOINTS.c.url,
                    _ENDPOINTS.c.secret_enc,
                )
                .join(_ENDPOINTS, _ENDPOINTS.c.id == _E.c.endpoint_id)
                .where(_E.c.id.in_(taken))
                .order_by(_E.c.id)
            ).all()
        jobs = []
        for r in rows:
            try:
                secret = self.cipher.decrypt(r.secret_enc, secret_context(r.endpoint_id))
            except SecretKeyError:
                log.error("webhook %s: its secret does not decrypt; not sent", r.endpoint_id)
                continue
            jobs.append(
                Job(
                    row_id=r.id,
                    endpoint_id=r.endpoint_id,
                    url=r.url,
                    secret=secret.decode(),
                    event_id=r.event_id,
                    type=r.type,
                    body=json.dumps(r.payload, separators=(",", ":")).encode(),
                    created_at=r.created_at,
                    attempts=r.attempts,
                )
            )
        return jobs

    def claim_one(self, row_id: int, holder: str) -> Job | None:
        """The row ``holder`` holds already (the API's test event), as a job."""
        with self.sessions() as db:
            r = db.execute(
                select(
                    _E.c.id,
                    _E.c.endpoint_id,
                    _E.c.event_id,
                    _E.c.type,
                    _E.c.payload,
                    _E.c.created_at,
                    _E.c.attempts,
                    _ENDPOINTS.c.url,
                    _ENDPOINTS.c.secret_enc,
                )
                .join(_ENDPOINTS, _ENDPOINTS.c.id == _E.c.endpoint_id)
                .where(_E.c.id == row_id, _E.c.locked_by == holder)
            ).first()
        if r is None:
            return None
        secret = self.cipher.decrypt(r.secret_enc, secret_context(r.endpoint_id)).decode()
        return Job(
            r.id,
            r.endpoint_id,
            r.url,
            secret,
            r.event_id,
            r.type,
            json.dumps(r.payload, separators=(",", ":")).encode(),
            r.created_at,
            r.attempts,
        )

    def finish(self, job: Job, response: WebhookResponse, holder: str | None = None) -> str:
        """Log the attempt and move the row on; returns its new status. A row whose lease
        this process lost meanwhile keeps the other holder's state (the attempt is logged)."""
        with self.sessions.begin() as db:
            return self._finish_in(db, job, response, holder or self.id, self.clock())

    def finish_many(self, results: list[tuple[Job, WebhookResponse]]) -> list[str]:
        """``finish`` for many POSTs in one transaction (one commit, one fsync on SQLite)."""
        now = self.clock()
        with self.sessions.begin() as db:
            return [self._finish_in(db, job, response, self.id, now) for job, response in results]

    def _finish_in(
        self, db: Session, job: Job, response: WebhookResponse, holder: str, now: datetime
    ) -> str:
        attempts = job.attempts + 1
        values: dict[str, object]
        if response.delivered:
            values = {"status": DeliveryState.DELIVERED.value, "locked_by": None}
        else:
            when = (
                None
                if job.type == EventType.WEBHOOK_TEST
                else next_try(attempts, job.created_at, now)
            )
            values = (
                {"status": DeliveryState.FAILED.value, "locked_by": None}
                if when is None
                else {"next_attempt_at": when, "locked_by": None}
            )
        db.add(
            WebhookAttempt(
                event_row_id=job.row_id,
                endpoint_id=job.endpoint_id,
                event_id=job.event_id,
                type=job.type,
                at=now,
                status_code=response.status_code,
                ms=response.ms,
                error=(response.error or None) and str(response.error)[:1000],
            )
        )
        db.execute(
            update(_E)
            .where(_E.c.id == job.row_id, _E.c.locked_by == holder)
            .values(attempts=attempts, last_error=response.error, **values)
        )
        status = str(values.get("status", _PENDING))
        if not response.delivered:
            log.info(
                "webhook %s: %s %s not delivered (%s); now %s",
                job.endpoint_id,
                job.type,
                job.event_id,
                response.error,
                status,
            )
        return status

    def prune(self) -> int:
        """Give up on events nobody could take for 24 hours (their endpoint was paused all
        along), and delete finished rows (and their attempts) older than ``keep``; returns
        how many were deleted."""
        now = self.clock()
        with self.sessions.begin() as db:
            db.execute(
                update(_E)
                .where(
                    _E.c.status == _PENDING,
                    _E.c.created_at < now - RETRY_FOR,
                    _E.c.next_attempt_at <= now,  # not held by anyone now
                )
                .values(
                    status=DeliveryState.FAILED.value,
                    locked_by=None,
                    last_error="not delivered within 24 hours (the webhook was paused)",
                )
            )
            result = db.execute(
                delete(_E).where(_E.c.status != _PENDING, _E.c.created_at < now - self.keep)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    # ---- the POSTs (on the event loop) -------------------------------------------------------

    async def post(self, job: Job) -> WebhookResponse:
        """POST one event (no database work: the caller records what happened)."""
        response = await self.sender.send(
            job.url, job.secret, job.event_id, int(self.clock().timestamp()), job.body
        )
        if response.delivered:
            self.delivered += 1
            self._failing.pop(job.endpoint_id, None)
        else:
            self.failed_attempts += 1
            self._failing[job.endpoint_id] = time.monotonic() + self.failing_for
        return response

    async def deliver(self, job: Job, holder: str | None = None) -> WebhookResponse:
        """POST one event and record it (the API's test event, and tests)."""
        response = await self.post(job)
        await asyncio.to_thread(self.finish, job, response, holder)
        return response

    async def run_once(self) -> int:
        """Deliver everything due now (tests): claim, POST, record, until nothing is due."""
        done = 0
        while True:
            jobs = await asyncio.to_thread(self.claim)
            if not jobs:
                return done
            await asyncio.gather(*(self.deliver(j) for j in jobs))
            done += len(jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; then let the POSTs in flight finish (each has its
        total deadline). The POSTs that ended are recorded in the transaction of the next
        claim."""
        in_flight: dict[asyncio.Task[WebhookResponse], Job] = {}
        per_endpoint: Counter[str] = Counter()
        ended: list[tuple[Job, WebhookResponse]] = []
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                room = self.max_in_flight - len(in_flight)
                jobs: list[Job] = []
                try:
                    jobs = await asyncio.to_thread(
                        self.claim, dict(per_endpoint), min(room, self.batch), ended
                    )
                except Exception:
                    # What ended is not recorded: it comes back after its lease (at least once).
                    log.exception("claiming webhook events failed; trying again")
                ended = []
                for job in jobs:
                    in_flight[asyncio.create_task(self.post(job))] = job
                    per_endpoint[job.endpoint_id] += 1
                if jobs and len(in_flight) < self.max_in_flight:
                    continue  # more may be due right away
                waiting: set[asyncio.Future[object]] = {stopping, *in_flight}  # type: ignore[arg-type]
                await asyncio.wait(
                    waiting, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                ended = self._collect(in_flight, per_endpoint)
                await self._maybe_prune()
        finally:
            stopping.cancel()
            if in_flight:
                await asyncio.wait(list(in_flight))
            ended += self._collect(in_flight, per_endpoint)
            if ended:
                try:
                    await asyncio.to_thread(self.finish_many, ended)
                except Exception:
                    log.exception("recording %d webhook deliveries failed", len(ended))

    def _collect(
        self, in_flight: dict[asyncio.Task[WebhookResponse], Job], per_endpoint: Counter[str]
    ) -> list[tuple[Job, WebhookResponse]]:
        """The POSTs that have ended, with their endpoints' slots freed (an event's successor
        becomes claimable only once the event is recorded: order per message)."""
        ended = []
        for task in [t for t in in_flight if t.done()]:
            job = in_flight.pop(task)
            per_endpoint[job.endpoint_id] -= 1
            if task.exception() is not None:
                log.error("webhook delivery failed", exc_info=task.exception())
                continue  # the row stays leased and is tried again after the lease
            ended.append((job, task.result()))
        return ended

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < 600:
            return
        self._pruned_at = now
        try:
            await asyncio.to_thread(self.prune)
        except Exception:
            log.exception("pruning old webhook events failed")
