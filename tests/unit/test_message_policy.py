"""Retry, backoff, expiry and transitions on an injected clock, without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailgate.domain.messages import (
    Action,
    AttemptResult,
    Outcome,
    RecipientResult,
    RetryPolicy,
    Status,
    decide,
    initial_status,
    new_message_id,
    refusal,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(
    base=timedelta(minutes=1), cap=timedelta(hours=1), jitter=0.2, max_age=timedelta(days=2)
)


def temp(code: int = 451, text: str = "4.3.0 try later") -> AttemptResult:
    return AttemptResult(Outcome.TEMPORARY, code, text, 5)


def test_backoff_doubles_and_is_capped() -> None:
    mid = [POLICY.delay(n, rand=lambda: 0.5).total_seconds() for n in range(1, 10)]
    assert mid == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_jitter_stays_within_bounds() -> None:
    assert POLICY.delay(3, rand=lambda: 0.0) == timedelta(seconds=240 * 0.8)
    assert POLICY.delay(3, rand=lambda: 1.0) == timedelta(seconds=240 * 1.2)


def test_temporary_failure_defers_with_backoff() -> None:
    d = decide(temp(), ["a@x.test"], 1, T0 + timedelta(days=2), T0, POLICY, lambda: 0.5)
    assert d.status is Status.DEFERRED
    assert d.next_attempt_at == T0 + timedelta(minutes=1)
    assert d.last_error == "451 4.3.0 try later"
    assert d.pending == ["a@x.test"]


def test_retries_until_max_age_then_fail() -> None:
    """Simulate a message that is always deferred: it fails at its expiry, not before."""
    created = T0
    expires = created + POLICY.max_age
    now, attempts = created, 0
    while True:
        attempts += 1
        d = decide(temp(), ["a@x.test"], attempts, expires, now, POLICY, lambda: 0.5)
        if d.status is Status.FAILED:
            break
        assert d.status is Status.DEFERRED and d.next_attempt_at is not None
        assert d.next_attempt_at <= expires
        now = d.next_attempt_at
    assert now == expires  # the last attempt happens at the expiry time itself
    assert d.last_error is not None and "gave up after" in d.last_error
    assert 40 < attempts < 60  # 1, 2, 4 ... 60 minutes, then hourly for two days


def test_permanent_failure_fails_at_once() -> None:
    result = AttemptResult(Outcome.PERMANENT, 554, "5.7.1 rejected", 3)
    d = decide(result, ["a@x.test"], 1, T0 + timedelta(days=2), T0, POLICY)
    assert d.status is Status.FAILED
    assert d.last_error == "554 5.7.1 rejected"


def test_partly_refused_recipients() -> None:
    ok = RecipientResult(Outcome.DELIVERED, 250, "ok")
    gone = RecipientResult(Outcome.PERMANENT, 550, "5.1.1 no such user")
    busy = RecipientResult(Outcome.TEMPORARY, 450, "4.2.1 mailbox busy")
    rcpts = ["a@x.test", "b@x.test", "c@x.test"]
    # One refused for good, the rest delivered: sent, with the refusal recorded.
    result = AttemptResult(
        Outcome.PERMANENT, 250, "ok", 3, {"a@x.test": ok, "b@x.test": gone, "c@x.test": ok}
    )
    d = decide(result, rcpts, 1, T0 + timedelta(days=2), T0, POLICY)
    assert d.status is Status.SENT
    assert d.last_error is not None and "b@x.test" in d.last_error
    # One temporarily refused: the message is deferred for that recipient only.
    result = AttemptResult(
        Outcome.TEMPORARY, 250, "ok", 3, {"a@x.test": ok, "b@x.test": gone, "c@x.test": busy}
    )
    d = decide(result, rcpts, 1, T0 + timedelta(days=2), T0, POLICY, lambda: 0.5)
    assert d.status is Status.DEFERRED
    assert d.pending == ["c@x.test"]
    assert d.last_error == "450 4.2.1 mailbox busy"
    # All refused: failed.
    result = AttemptResult(Outcome.PERMANENT, 550, "5.1.1", 3, {r: gone for r in rcpts})
    assert decide(result, rcpts, 1, T0, T0, POLICY).status is Status.FAILED


def test_unreported_recipient_shares_the_overall_outcome() -> None:
    ok = RecipientResult(Outcome.DELIVERED, 250, "ok")
    result = AttemptResult(Outcome.TEMPORARY, 451, "4.3.0 later", 3, {"a@x.test": ok})
    d = decide(result, ["a@x.test", "b@x.test"], 1, T0 + timedelta(days=2), T0, POLICY)
    assert d.status is Status.DEFERRED and d.pending == ["b@x.test"]


@pytest.mark.parametrize(
    ("action", "status", "legal"),
    [
        (Action.RELEASE, Status.HELD, True),
        (Action.RELEASE, Status.QUEUED, False),
        (Action.CANCEL, Status.QUEUED, True),
        (Action.CANCEL, Status.SENDING, False),
        (Action.CANCEL, Status.SENT, False),
        (Action.RETRY, Status.FAILED, True),
        (Action.RETRY, Status.DEFERRED, True),
        (Action.RETRY, Status.SENT, False),
        (Action.RETRY, Status.CANCELLED, False),
        (Action.HOLD, Status.QUEUED, True),
        (Action.HOLD, Status.SCHEDULED, True),
        (Action.HOLD, Status.DEFERRED, True),
        (Action.HOLD, Status.HELD, False),
        (Action.HOLD, Status.SENDING, False),
        (Action.HOLD, Status.SENT, False),
    ],
)
def test_transitions(action: Action, status: Status, legal: bool) -> None:
    why = refusal(action, status)
    assert (why is None) is legal
    if why:
        assert status.value in why and action.value in why


def test_initial_status_and_ids() -> None:
    assert initial_status(True, None, T0) is Status.HELD
    assert initial_status(False, T0 + timedelta(seconds=1), T0) is Status.SCHEDULED
    assert initial_status(False, T0 - timedelta(seconds=1), T0) is Status.QUEUED
    a, b = new_message_id(1000), new_message_id(2000)
    assert len(a) == 32 and a < b
