"""Message statuses, the legal transitions, and the retry policy. Pure: no I/O.

Statuses (README "Sending mail")::

    held ──release──> queued | scheduled        scheduled ──(send_at reached)──> sending
    queued ──claim──> sending ──> sent | deferred | failed
    deferred ──(next_attempt_at)──> sending      deferred | failed ──retry──> queued
    held | scheduled | queued | deferred ──cancel──> cancelled
    scheduled | queued | deferred ──hold──> held

``sending`` is owned by one worker until its lease runs out; a worker that dies leaves the
row ``sending`` with an expired lease and the next claim takes it again (at-least-once).
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from mailgate.domain.pauses import PauseSignal


class Status(StrEnum):
    HELD = "held"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Action(StrEnum):
    RELEASE = "release"
    CANCEL = "cancel"
    RETRY = "retry"
    HOLD = "hold"


# Statuses a worker may claim (once next_attempt_at has come). A ``sending`` row is claimable
# again only after its lease expired: the claim sets next_attempt_at to the lease's end.
CLAIMABLE = (Status.QUEUED, Status.SCHEDULED, Status.DEFERRED, Status.SENDING)
# Counted as "in the queue" by /healthz and the metrics.
PENDING = (Status.QUEUED, Status.SCHEDULED, Status.DEFERRED, Status.SENDING)
FINAL = (Status.SENT, Status.FAILED, Status.CANCELLED)

ALLOWED_FROM: dict[Action, tuple[Status, ...]] = {
    Action.RELEASE: (Status.HELD,),
    Action.CANCEL: (Status.HELD, Status.SCHEDULED, Status.QUEUED, Status.DEFERRED),
    Action.RETRY: (Status.DEFERRED, Status.FAILED),
    # Stop mail that is waiting (e.g. a wrong batch noticed in time); release sends it.
    Action.HOLD: (Status.SCHEDULED, Status.QUEUED, Status.DEFERRED),
}

# What a claimed message that has not started yet still allows.
_BEFORE_ATTEMPT = (Action.HOLD, Action.CANCEL)

_WHY_NOT: dict[Status, str] = {
    Status.SENDING: "it is being delivered right now",
    Status.SENT: "it has been delivered",
    Status.FAILED: "it has failed (use retry)",
    Status.CANCELLED: "it has been cancelled",
    Status.HELD: "it is held (use release or cancel)",
    Status.SCHEDULED: "it is scheduled (cancel it, or wait for send_at)",
    Status.QUEUED: "it is queued already",
    Status.DEFERRED: "it is waiting for a retry (use retry or cancel)",
}


def refusal(action: Action, status: Status, *, in_attempt: bool = True) -> str | None:
    """``None`` when ``action`` is legal for a message in ``status``, else the reason.

    A ``sending`` message whose attempt has not started (``in_attempt`` false: a worker
    claimed it, and it waits in the worker's lane) can still be held or cancelled: the
    worker checks, right before it sends, that the message is still its own."""
    if status in ALLOWED_FROM[action]:
        return None
    if status is Status.SENDING and not in_attempt and action in _BEFORE_ATTEMPT:
        return None
    allowed = ", ".join(s.value for s in ALLOWED_FROM[action])
    return (
        f"cannot {action.value} a {status.value} message: {_WHY_NOT[status]} "
        f"({action.value} applies to: {allowed})"
    )


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITY_RANK: dict[Priority, int] = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
RANK_PRIORITY = {v: k for k, v in PRIORITY_RANK.items()}


def new_message_id(now_ms: int | None = None) -> str:
    """32 hex digits: 48 bits of milliseconds, then 80 random bits (UUIDv7-like).

    Ids sort by creation time, so "newest first" and the list cursor use the primary key.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ms:012x}{secrets.token_hex(10)}"


def initial_status(hold: bool, send_at: datetime | None, now: datetime) -> Status:
    if hold:
        return Status.HELD
    if send_at is not None and send_at > now:
        return Status.SCHEDULED
    return Status.QUEUED


# ---- delivery outcomes and the retry policy ----------------------------------------------


class Outcome(StrEnum):
    """How one SMTP attempt ended, as classified once by the transport."""

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class RecipientResult:
    outcome: Outcome
    code: int | None
    text: str


@dataclass(frozen=True)
class AttemptResult:
    """One delivery attempt: the overall outcome, the deciding reply, per-recipient replies."""

    outcome: Outcome
    code: int | None
    text: str
    ms: int
    recipients: dict[str, RecipientResult] = field(default_factory=dict)
    step: str | None = None
    retry_after_s: float | None = None
    """The peer said when to try again (HTTP ``Retry-After``, RFC 9110 10.2.3): a temporary
    failure is retried then, not after the usual backoff."""
    possibly_delivered: bool = False
    """The outcome is unknown and the peer may have the message: the whole message went out
    but no reply to its end came (lost connection, no answer within ``data_done_s``), or a
    worker stopped in the middle of the attempt. Retried only after
    ``RetryPolicy.possibly_delivered_after``, and flagged in the attempt log."""
    pause: PauseSignal | None = None
    """The answer was a provider quota or throttling reply (``domain/pauses.py``): the
    transport made the outcome temporary, and the whole configuration pauses."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter until ``max_age``; then the message fails.

    Delay n (n = attempts so far, from 1) is ``base * 2**(n-1)`` capped at ``cap``, scaled by a
    random factor in ``[1 - jitter, 1 + jitter]`` so that mail deferred together does not
    come back together. The last attempt is made at the expiry time itself.
    """

    base: timedelta = timedelta(minutes=1)
    cap: timedelta = timedelta(hours=1)
    jitter: float = 0.2
    max_age: timedelta = timedelta(days=2)
    possibly_delivered_after: timedelta = timedelta(hours=1)
    """The wait before retrying a message the server may have received already: a repeat is
    worse than a late message, and a server that took its time to answer often did deliver."""

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> timedelta:
        raw = min(self.cap.total_seconds(), self.base.total_seconds() * 2 ** max(attempts - 1, 0))
        factor = 1 - self.jitter + 2 * self.jitter * rand()
        return timedelta(seconds=raw * factor)


@dataclass(frozen=True)
class Decision:
    """What happens to a message after an attempt."""

    status: Status
    next_attempt_at: datetime | None
    last_error: str | None
    pending: list[str]
    """Recipients still to be tried (a retry sends only to these)."""


def describe(code: int | None, text: str) -> str:
    return f"{code} {text}".strip() if code is not None else text


def decide(
    result: AttemptResult,
    rcpt_to: list[str],
    attempts: int,
    expires_at: datetime,
    now: datetime,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
    pause_until: datetime | None = None,
) -> Decision:
    """The delivery service alone decides retry or fail (cf. Mailman's outgoing runner).

    ``rcpt_to`` are the recipients this attempt was for; ``attempts`` counts this one.
    Recipients refused permanently are dropped; recipients refused temporarily are retried.
    ``pause_until``: the configuration pauses until then (the result was a quota or
    throttling answer): the pending recipients wait for it instead of the backoff.
    """
    if result.outcome is Outcome.PERMANENT and not result.recipients:
        return Decision(Status.FAILED, None, describe(result.code, result.text), [])
    if result.recipients:
        temp = [r for r in rcpt_to if _rcpt_outcome(result, r) is Outcome.TEMPORARY]
        perm = [r for r in rcpt_to if _rcpt_outcome(result, r) is Outcome.PERMANENT]
    else:
        temp = list(rcpt_to) if result.outcome is Outcome.TEMPORARY else []
        perm = []
    if not temp:
        if len(perm) == len(rcpt_to):
            first = result.recipients.get(perm[0]) if perm else None
            why = describe(first.code, first.text) if first else describe(result.code, result.text)
            return Decision(Status.FAILED, None, f"all recipients refused: {why}", [])
        error = None
        if perm:
            error = "refused: " + "; ".join(
                f"{r}: {describe(result.recipients[r].code, result.recipients[r].text)}"
                for r in perm
            )
        return Decision(Status.SENT, None, error, [])
    reason = describe(result.code, result.text)
    rr = result.recipients.get(temp[0])
    if rr is not None:
        reason = describe(rr.code, rr.text)
    if result.possibly_delivered:
        reason = f"possibly delivered: {reason}"
    if now >= expires_at:
        return Decision(Status.FAILED, None, f"gave up after {attempts} attempts: {reason}", temp)
    delay = policy.delay(attempts, rand)
    if result.possibly_delivered:
        delay = policy.possibly_delivered_after
    elif result.retry_after_s is not None:
        # The peer's own word beats our guess, within the backoff's cap (a peer asking for a
        # day must not park mail past what an operator configured).
        delay = timedelta(seconds=min(max(result.retry_after_s, 1.0), policy.cap.total_seconds()))
    when = min(now + delay, expires_at)
    if pause_until is not None and result.pause is not None:
        when = min(max(pause_until, now), expires_at)
    return Decision(Status.DEFERRED, when, reason, temp)


def deciding_reply(result: AttemptResult, decision: Decision) -> tuple[int | None, str]:
    """The reply that decided what happens to the message, for its attempt log: the DATA
    reply when it was sent; otherwise the reply to the first recipient still pending (or,
    for a failure, the first refused one) - not a 250 that only some recipients got."""
    if decision.status is Status.SENT or not result.recipients:
        return result.code, result.text
    undelivered = decision.pending or [
        r for r, rr in result.recipients.items() if rr.outcome is not Outcome.DELIVERED
    ]
    rr = result.recipients.get(undelivered[0]) if undelivered else None
    return (rr.code, rr.text) if rr is not None else (result.code, result.text)


def _rcpt_outcome(result: AttemptResult, rcpt: str) -> Outcome:
    # The transport reports each recipient's final outcome (a recipient accepted at RCPT TO
    # takes DATA's outcome); one it did not report shares the overall outcome.
    rr = result.recipients.get(rcpt)
    return result.outcome if rr is None else rr.outcome
