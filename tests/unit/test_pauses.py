"""Quota and throttling answers (domain/pauses.py) and what the transports make of them.
Pure: no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailgate.adapters.http_api import gmail_api, graph
from mailgate.adapters.smtp.replies import RecipientReply, SendResult, SmtpReply
from mailgate.adapters.smtp.transport import from_send_result
from mailgate.domain.messages import AttemptResult, Outcome, RetryPolicy, Status, decide
from mailgate.domain.pauses import (
    HTTP_RULES,
    NOT_PAUSES,
    SMTP_RULES,
    PauseKind,
    PausePolicy,
    PauseSignal,
    classify_http,
    classify_smtp,
)


def _smtp(line: str) -> PauseSignal | None:
    code, _, rest = line.partition(" ")
    reply = SmtpReply.parse(int(code), rest)
    return classify_smtp(reply.code, reply.enhanced, reply.text)


@pytest.mark.parametrize("rule", SMTP_RULES, ids=lambda r: r.name)
def test_every_row_catches_its_own_example(rule) -> None:  # type: ignore[no-untyped-def]
    signal = _smtp(rule.example)
    assert signal is not None, rule.example
    assert (signal.rule, signal.kind) == (rule.name, rule.kind)
    assert rule.source.startswith("https://")


@pytest.mark.parametrize("rule", NOT_PAUSES, ids=lambda r: r.name)
def test_look_alikes_are_not_pauses(rule) -> None:  # type: ignore[no-untyped-def]
    assert _smtp(rule.example) is None


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # Texts as providers send them (sources in domain/pauses.py).
        (
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed "
            "to process message due to a permanent exception with message [BeginDiagnosticData]"
            "Cannot submit message. 0.35250:0A001D84",
            PauseKind.QUOTA,
        ),
        ("550 5.4.5 Daily user sending limit exceeded. - gsmtp", PauseKind.QUOTA),
        ("550 5.4.5 Daily SMTP relay limit exceeded for user. - gsmtp", PauseKind.QUOTA),
        ("550 5.4.5 Daily sending quota exceeded. - gsmtp", PauseKind.QUOTA),
        ("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", PauseKind.THROTTLED),
        ("432 4.3.2 concurrent connection limit exceeded", PauseKind.THROTTLED),
        ("421 4.7.0 Try again later, closing connection. (EHLO) - gsmtp", PauseKind.THROTTLED),
        ("421 4.7.0 Temporary System Problem.  Try again later (10). - gsmtp", PauseKind.THROTTLED),
        ("421 4.7.28 Gmail has detected an unusual rate of mail", PauseKind.THROTTLED),
        (
            "451 4.7.500 Server busy. Please try again later from [1.2.3.4]. (S77714)",
            PauseKind.THROTTLED,
        ),
        ("451 4.7.1 Please try again later", PauseKind.THROTTLED),
        ("450 4.7.1 <a@b.c>: Recipient address rejected: rate limit exceeded", PauseKind.THROTTLED),
        ("454 Throttling failure: Maximum sending rate exceeded.", PauseKind.THROTTLED),
        ("454 Throttling failure: Daily message quota exceeded.", PauseKind.QUOTA),
        # Not about the sending account:
        ("452 4.2.2 The email account that you tried to reach is over quota.", None),
        ("552 5.2.2 Mailbox full", None),
        ("452 4.5.3 Too many recipients", None),
        ("421 4.7.66 TLS 1.0 and 1.1 are not supported.", None),
        ("451 4.7.1 Greylisted, please try again later", None),
        ("450 4.2.0 <b@x.example>: Recipient address rejected: Greylisted", None),
        ("421 4.7.0 TLS required for RCPT domain, closing connection.", None),
        ("450 4.2.1 The user you are trying to contact is receiving mail too quickly.", None),
        ("550 5.1.1 The email account that you tried to reach does not exist.", None),
        ("535 5.7.3 Authentication unsuccessful", None),
        ("451 4.3.0 Mail server temporarily rejected message.", None),
        ("250 2.0.0 OK", None),
    ],
)
def test_real_replies(line: str, kind: PauseKind | None) -> None:
    signal = _smtp(line)
    assert (signal.kind if signal else None) is kind


@pytest.mark.parametrize(
    ("status", "reasons", "rule"),
    [
        (429, set(), "http_429"),
        (429, {"ApplicationThrottled"}, "http_429"),
        (403, {"dailyLimitExceeded"}, "google_daily_limit"),
        (429, {"userRateLimitExceeded"}, "google_rate_limit"),
        (403, {"rateLimitExceeded"}, "google_rate_limit"),
        (403, {"ErrorQuotaExceeded"}, "graph_quota"),
        (503, set(), None),
        (504, set(), None),
        (403, {"ErrorAccessDenied"}, None),
        (200, set(), None),
    ],
)
def test_http_answers(status: int, reasons: set[str], rule: str | None) -> None:
    signal = classify_http(status, reasons, 12.0)
    assert (signal.rule if signal else None) == rule
    if signal is not None:
        assert signal.retry_after_s == 12.0
    assert all(r.source.startswith("https://") for r in HTTP_RULES)


def test_graph_and_gmail_answers_carry_the_pause() -> None:
    throttled = graph.classify(429, b'{"error": {"code": "ApplicationThrottled"}}', retry_after_s=7)
    result = throttled.result(5)
    assert result.outcome is Outcome.TEMPORARY
    assert result.pause == PauseSignal(PauseKind.THROTTLED, "http_429", 7)
    unwell = graph.classify(503, b"", retry_after_s=3).result(5)
    assert unwell.outcome is Outcome.TEMPORARY and unwell.pause is None
    body = b'{"error": {"code": 403, "errors": [{"reason": "dailyLimitExceeded"}]}}'
    quota = gmail_api.classify(403, body).result(1)
    assert quota.outcome is Outcome.TEMPORARY
    assert quota.pause is not None and quota.pause.kind is PauseKind.QUOTA


def test_pause_windows() -> None:
    policy = PausePolicy()
    quota = PauseSignal(PauseKind.QUOTA, "x")
    throttled = PauseSignal(PauseKind.THROTTLED, "x")
    assert policy.window(quota, 1) == timedelta(hours=1)
    assert policy.window(quota, 5) == timedelta(hours=1)
    assert [policy.window(throttled, n).total_seconds() for n in (1, 2, 3)] == [60, 120, 240]
    assert policy.window(throttled, 30) == timedelta(hours=1)
    told = PauseSignal(PauseKind.QUOTA, "x", retry_after_s=90)
    assert policy.window(told, 1) == timedelta(seconds=90)
    assert policy.window(PauseSignal(PauseKind.THROTTLED, "x", 0), 1) == timedelta(seconds=1)
    far = PauseSignal(PauseKind.THROTTLED, "x", 10 * 86400)
    assert policy.window(far, 1) == timedelta(hours=24)


def _reply(line: str) -> SmtpReply:
    code, _, rest = line.partition(" ")
    return SmtpReply.parse(int(code), rest)


def test_a_permanent_quota_answer_after_data_becomes_a_deferral() -> None:
    quota = _reply("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
    sent = SendResult(
        Outcome.PERMANENT,
        quota,
        {
            "a@x.example": RecipientReply(Outcome.PERMANENT, quota),
            "b@x.example": RecipientReply(Outcome.PERMANENT, quota),
        },
        40,
        "data",
    )
    result = from_send_result(sent)
    assert result.outcome is Outcome.TEMPORARY
    assert result.pause is not None and result.pause.kind is PauseKind.QUOTA
    assert {r.outcome for r in result.recipients.values()} == {Outcome.TEMPORARY}
    assert result.code == 554  # the reply stays visible as it was


def test_a_quota_answer_to_one_rcpt_holds_that_recipient_only() -> None:
    ok = _reply("250 2.1.5 OK")
    quota = _reply("550 5.4.5 Daily user sending limit exceeded.")
    unknown = _reply("550 5.1.1 No such user")
    sent = SendResult(
        Outcome.PERMANENT,
        unknown,
        {
            "a@x.example": RecipientReply(Outcome.DELIVERED, ok),
            "b@x.example": RecipientReply(Outcome.PERMANENT, quota),
            "c@x.example": RecipientReply(Outcome.PERMANENT, unknown),
        },
        40,
        "data",
    )
    result = from_send_result(sent)
    assert result.pause is not None
    outcomes = {a: r.outcome for a, r in result.recipients.items()}
    assert outcomes == {
        "a@x.example": Outcome.DELIVERED,
        "b@x.example": Outcome.TEMPORARY,
        "c@x.example": Outcome.PERMANENT,
    }


def test_decide_waits_for_the_pause_not_the_backoff() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    result = AttemptResult(
        Outcome.TEMPORARY, 554, "5.2.0 quota", 1, pause=PauseSignal(PauseKind.QUOTA, "q")
    )
    until = now + timedelta(hours=1)
    d = decide(result, ["a@x"], 1, now + timedelta(days=2), now, RetryPolicy(), pause_until=until)
    assert d.status is Status.DEFERRED and d.next_attempt_at == until
    # Never past the message's expiry.
    d = decide(
        result, ["a@x"], 1, now + timedelta(minutes=5), now, RetryPolicy(), pause_until=until
    )
    assert d.next_attempt_at == now + timedelta(minutes=5)
