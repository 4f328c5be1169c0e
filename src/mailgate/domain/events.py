"""Delivery events for webhooks (README "Webhooks"): their types, which message status
causes which, and the retry schedule of a delivery. Pure: no I/O."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailgate.domain.messages import Status


class EventType(StrEnum):
    MESSAGE_SENT = "message.sent"
    MESSAGE_DEFERRED = "message.deferred"
    MESSAGE_FAILED = "message.failed"
    MESSAGE_HELD = "message.held"
    MESSAGE_CANCELLED = "message.cancelled"
    SERVER_NEEDS_REAUTHORIZATION = "server.needs_reauthorization"
    SERVER_PAUSED = "server.paused"
    WEBHOOK_TEST = "webhook.test"


SUBSCRIBABLE = tuple(t.value for t in EventType if t is not EventType.WEBHOOK_TEST)

EVENT_OF_STATUS: dict[Status, EventType] = {
    Status.SENT: EventType.MESSAGE_SENT,
    Status.DEFERRED: EventType.MESSAGE_DEFERRED,
    Status.FAILED: EventType.MESSAGE_FAILED,
    Status.HELD: EventType.MESSAGE_HELD,
    Status.CANCELLED: EventType.MESSAGE_CANCELLED,
}


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


RETRY_FOR = timedelta(hours=24)
"""An event is retried until it is this old; then it is ``failed``."""
FIRST_RETRY = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)


def next_try(attempts: int, created_at: datetime, now: datetime) -> datetime | None:
    """When to try an event again after its ``attempts``-th failure (30 s, 1 min, 2 min, ...
    at most an hour apart), or None: retrying ends 24 hours after the event."""
    delay = min(FIRST_RETRY * 2 ** min(attempts - 1, 20), RETRY_CAP)
    when = now + delay
    return when if when <= created_at + RETRY_FOR else None


def new_event_id() -> str:
    """The ``webhook-id``: unique per event, the same on every retry (receivers dedupe)."""
    return "evt_" + secrets.token_hex(12)


def new_endpoint_id() -> str:
    return "wh_" + secrets.token_hex(12)


@dataclass(frozen=True)
class WebhookResponse:
    """What one POST of an event did: the receiver's status code (None: no answer - refused,
    timed out, denied by the outbound policy), how long it took, and why it failed."""

    status_code: int | None
    ms: int
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
