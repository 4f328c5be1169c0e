"""What a delivery worker holds and what it learned: claimed messages and recorded attempts.

Pure values; the queue port (``ports.DeliveryQueue``) hands them out and takes them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailgate.domain.messages import AttemptResult, Decision


@dataclass(frozen=True)
class Claimed:
    """A message a worker holds under a lease: what it needs to send it, and nothing else."""

    id: str
    tenant_id: int
    server_id: int | None
    server_name: str
    mail_from: str
    rcpt_to: list[str]
    """The recipients still to be tried (all of them, on a first attempt)."""
    raw: bytes
    attempt_count: int
    created_at: datetime
    expires_at: datetime
    recipient_status: dict[str, Any] | None = None
    """Per-recipient state as claimed (only this worker changes it while it holds the
    lease; a worker that lost its lease does not overwrite the row)."""
    probe: bool = False
    """The one message that tries a paused configuration again (``adapters/db/pauses.py``):
    an answer that is not a quota or throttling one ends the pause."""


@dataclass(frozen=True)
class Recorded:
    """One attempt as stored, with what the retry policy decided."""

    message: Claimed
    result: AttemptResult
    decision: Decision


@dataclass(frozen=True)
class SendSlot:
    """When one message of a configuration may be sent, under its limits
    (``messages_per_minute``, ``recipients_per_day``), as the installation-wide limiter
    reserved it."""

    at: datetime
    keep: bool
    """False: too far ahead for the worker to hold the message; give it back, due at ``at``
    (nothing was used up for it)."""
    reason: str | None = None
    """Why it waits, when it waits for ``recipients_per_day`` (shown as its last error)."""


def per_day_reason(per_day: int, until: datetime) -> str:
    """The last error of a message waiting for ``recipients_per_day``."""
    return (
        f"waiting: limits.recipients_per_day ({per_day}) is reached for the last 24 hours; "
        f"more may go from {until.isoformat(timespec='seconds').replace('+00:00', 'Z')}"
    )


@dataclass(frozen=True)
class Journaled:
    """What one journal write of a worker did (``ports.DeliveryQueue.journal``)."""

    started: frozenset[str]
    """The messages marked started: the worker still holds them and sends them now. One
    asked for but missing here was taken away meanwhile (held, cancelled, or taken over
    after the worker was thought dead) and must not be sent."""
    recorded: list[Recorded]


@dataclass(frozen=True)
class Heartbeat:
    """What a worker's heartbeat found (``ports.DeliveryQueue.heartbeat``)."""

    presumed_dead: bool
    """This worker had been taken for dead (its heartbeat stopped for too long) and its
    messages were taken over: the ones it holds and has not started are no longer its own."""
    dead: list[str]
    """Workers found dead now, whose messages this heartbeat took over."""
    released: int
    """Their messages made ready again (not counting attempts closed as possibly
    delivered)."""
