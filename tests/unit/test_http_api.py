"""The HTTP mail API transports' protocol details, as pure functions: the Bcc header and the
draft split of a MIME message, JWT claims, Retry-After, how Graph's and Gmail's answers are
classified, the transcript's redaction, the per-mailbox gate, and the API hints."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from tests.clock import TestClock

from mailgate.adapters.http_api import gmail_api, graph
from mailgate.adapters.http_api.exchange import MailboxGates, aadsts_code, retry_after_s
from mailgate.adapters.http_api.jwt import TokenSummary, decode_claims
from mailgate.adapters.http_api.mime import hidden_recipients, split_for_draft, with_bcc
from mailgate.adapters.http_api.transcript import redact_url
from mailgate.domain.messages import AttemptResult, Outcome, RetryPolicy, Status, decide
from mailgate.domain.transport import FailureKind, Reply
from mailgate.services.diagnosis.hints import api_hint, hint_for

RAW = (
    b"From: Sender <sender@example.com>\r\nTo: Zed <Z@Example.org>, b@example.org\r\n"
    b"Cc: c@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
)


# ---- Bcc --------------------------------------------------------------------------------------


def test_a_message_without_hidden_recipients_is_sent_unchanged() -> None:
    rcpts = ["z@example.org", "b@example.org", "c@example.org"]
    assert with_bcc(RAW, rcpts) is RAW
    assert hidden_recipients(RAW, rcpts) == []


def test_hidden_recipients_go_in_a_folded_bcc_header_in_front() -> None:
    rcpts = ["z@example.org", "x@example.org", "X@example.org", "y@example.org"]
    sent = with_bcc(RAW, rcpts)
    assert sent == b"Bcc: x@example.org,\r\n y@example.org\r\n" + RAW
    parsed = BytesParser(policy=policy.default).parsebytes(sent)
    assert [a.addr_spec for a in parsed["Bcc"].addresses] == ["x@example.org", "y@example.org"]


def test_bare_lf_messages_keep_their_line_ends() -> None:
    raw = RAW.replace(b"\r\n", b"\n")
    assert with_bcc(raw, ["hidden@example.org"]) == b"Bcc: hidden@example.org\n" + raw


# ---- the draft split ---------------------------------------------------------------------------


def _message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = "rcpt@example.org"
    msg["Subject"] = "report"
    msg.set_content("plain")
    msg.add_alternative("<p>html <img src='cid:logo@x'></p>", subtype="html")
    msg.get_payload()[1].add_related(b"PNG", "image", "png", cid="<logo@x>")
    msg.add_attachment(b"%PDF" * 1000, "application", "pdf", filename="r.pdf")
    forwarded = EmailMessage()
    forwarded["Subject"] = "inner"
    forwarded.set_content("inner body")
    msg.add_attachment(forwarded)
    return msg.as_bytes(policy=policy.default.clone(linesep="\r\n"))


def test_the_draft_keeps_text_and_headers_and_the_attachments_come_out() -> None:
    draft, taken = split_for_draft(_message())
    parsed = BytesParser(policy=policy.default).parsebytes(draft)
    assert parsed["Subject"] == "report"
    body = parsed.get_body(("html",))
    assert body is not None and "cid:logo@x" in body.get_content()
    assert parsed.get_body(("plain",)) is not None
    assert [(a.name, a.content_type, a.inline, a.content_id) for a in taken] == [
        ("attachment", "image/png", True, "logo@x"),
        ("r.pdf", "application/pdf", False, None),
        ("message.eml", "message/rfc822", False, None),
    ]
    assert taken[1].data == b"%PDF" * 1000
    assert b"inner body" in taken[2].data
    assert b"%PDF" not in draft and b"\r\n" in draft


def test_a_message_of_attachments_only_keeps_an_empty_body_and_a_plain_one_stays_whole() -> None:
    msg = EmailMessage()
    msg["Subject"] = "only"
    msg.add_attachment(b"data", "application", "octet-stream", filename="a.bin")
    draft, taken = split_for_draft(msg.as_bytes())
    assert [a.name for a in taken] == ["a.bin"]
    assert BytesParser(policy=policy.default).parsebytes(draft).get_body(("plain",)) is not None
    assert split_for_draft(RAW) == (RAW, [])


# ---- tokens, Retry-After, transcripts -----------------------------------------------------------


def _jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


def test_claims_are_read_from_jwts_only() -> None:
    token = _jwt({"aud": "https://graph.microsoft.com", "roles": ["Mail.Send"], "exp": 0})
    summary = TokenSummary.of(decode_claims(token) or {})
    assert summary.describe() == (
        "audience https://graph.microsoft.com, roles Mail.Send, valid until 1970-01-01 00:00:00Z"
    )
    delegated = TokenSummary.of({"aud": ["x"], "scp": "Mail.Send User.Read", "upn": "a@b.c"})
    assert delegated.describe() == "audience x, scopes Mail.Send, User.Read, for a@b.c"
    for opaque in ("ya29.a0AfH6SMB", "at-abc", "a.b", "a.!!!.c", f"x.{_jwt({})[0:0]}.y"):
        assert decode_claims(opaque) is None


def test_retry_after_is_seconds_or_a_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_s("120", now) == 120.0
    assert retry_after_s("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert retry_after_s("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0.0
    assert retry_after_s("soon", now) is None
    assert retry_after_s(None, now) is None


def test_urls_lose_their_query_values_but_harmless_ones() -> None:
    assert redact_url("https://o.example/s?authtoken=eyJ&x=1") == (
        "https://o.example/s?authtoken=<redacted>&x=<redacted>"
    )
    assert redact_url("https://g.example/send?uploadType=media").endswith("?uploadType=media")
    assert redact_url("https://g.example/v1.0/users/a@b") == "https://g.example/v1.0/users/a@b"


def test_aadsts_codes_are_found() -> None:
    assert aadsts_code("refused: AADSTS7000215: Invalid client secret") == "AADSTS7000215"
    assert aadsts_code("invalid_grant") is None


# ---- Graph's and Gmail's answers ----------------------------------------------------------------


def _graph(code: str, message: str = "m") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "code", "kw", "outcome", "kind", "says"),
    [
        (429, "TooManyRequests", {}, Outcome.TEMPORARY, FailureKind.THROTTLED, "429"),
        (503, "ServiceUnavailable", {}, Outcome.TEMPORARY, FailureKind.THROTTLED, "503"),
        (504, "GatewayTimeout", {}, Outcome.TEMPORARY, FailureKind.THROTTLED, "504"),
        (
            403,
            "ErrorSubmissionQuotaExceeded",
            {},
            Outcome.TEMPORARY,
            FailureKind.THROTTLED,
            "Quota",
        ),
        (
            401,
            "InvalidAuthenticationToken",
            {},
            Outcome.TEMPORARY,
            FailureKind.AUTH_FAILED,
            "authorize again",
        ),
        (
            403,
            "ErrorAccessDenied",
            {"app_only": True},
            Outcome.PERMANENT,
            FailureKind.ACCESS_DENIED,
            "RBAC for Applications",
        ),
        (403, "ErrorAccessDenied", {}, Outcome.PERMANENT, FailureKind.ACCESS_DENIED, "Send As"),
        (
            403,
            "ErrorAccessDenied",
            {"drafting": True},
            Outcome.PERMANENT,
            FailureKind.ACCESS_DENIED,
            "Mail.ReadWrite",
        ),
        (
            403,
            "ErrorSendAsDenied",
            {},
            Outcome.PERMANENT,
            FailureKind.ACCESS_DENIED,
            "From address",
        ),
        (
            404,
            "ErrorInvalidUser",
            {},
            Outcome.PERMANENT,
            FailureKind.MAILBOX_NOT_FOUND,
            "authentication.username",
        ),
        (404, "ErrorItemNotFound", {}, Outcome.TEMPORARY, FailureKind.REPLY, "404"),
        (413, "RequestEntityTooLarge", {}, Outcome.PERMANENT, FailureKind.TOO_LARGE, "413"),
        (500, "InternalServerError", {}, Outcome.TEMPORARY, FailureKind.REPLY, "500"),
        (
            400,
            "ErrorInvalidRecipients",
            {},
            Outcome.PERMANENT,
            FailureKind.REPLY,
            "ErrorInvalidRecipients",
        ),
    ],
)
def test_graph_answers(
    status: int, code: str, kw: dict[str, bool], outcome: Outcome, kind: FailureKind, says: str
) -> None:
    error = graph.classify(status, _graph(code), retry_after_s=7.0, **kw)
    assert (error.outcome, error.kind) == (outcome, kind)
    assert says in error.detail
    assert error.reply == Reply(status, code, "m")
    assert error.rejected == (status == 401)
    result = error.result(5)
    assert (result.code, result.step) == (status, "send")
    assert result.retry_after_s == (7.0 if kind is FailureKind.THROTTLED else None)


def test_graph_answers_without_a_json_body() -> None:
    error = graph.classify(502, b"<html>Bad Gateway</html>")
    assert error.outcome is Outcome.TEMPORARY and "Bad Gateway" in error.detail


def test_upload_sessions_say_where_to_go_on() -> None:
    assert graph.next_range_start({"nextExpectedRanges": ["4194304-"]}, 0) == 4194304
    assert graph.next_range_start({"nextExpectedRanges": ["2097152"]}, 0) == 2097152
    assert graph.next_range_start({}, 99) == 99
    assert graph.next_range_start({"nextExpectedRanges": ["x-"]}, 5) == 5


def _google(status: int, reason: str, state: str = "PERMISSION_DENIED") -> bytes:
    return json.dumps(
        {"error": {"code": status, "message": "m", "errors": [{"reason": reason}], "status": state}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "reason", "outcome", "kind", "rejected"),
    [
        (429, "rateLimitExceeded", Outcome.TEMPORARY, FailureKind.THROTTLED, False),
        (403, "rateLimitExceeded", Outcome.TEMPORARY, FailureKind.THROTTLED, False),
        (403, "userRateLimitExceeded", Outcome.TEMPORARY, FailureKind.THROTTLED, False),
        (403, "dailyLimitExceeded", Outcome.TEMPORARY, FailureKind.THROTTLED, False),
        (403, "insufficientPermissions", Outcome.TEMPORARY, FailureKind.ACCESS_DENIED, True),
        (403, "domainPolicy", Outcome.PERMANENT, FailureKind.ACCESS_DENIED, False),
        (401, "authError", Outcome.TEMPORARY, FailureKind.AUTH_FAILED, True),
        (400, "invalidArgument", Outcome.PERMANENT, FailureKind.REPLY, False),
        (400, "failedPrecondition", Outcome.PERMANENT, FailureKind.REPLY, False),
        (500, "backendError", Outcome.TEMPORARY, FailureKind.REPLY, False),
        (503, "backendError", Outcome.TEMPORARY, FailureKind.THROTTLED, False),
        (413, "uploadTooLarge", Outcome.PERMANENT, FailureKind.TOO_LARGE, False),
    ],
)
def test_gmail_answers(
    status: int, reason: str, outcome: Outcome, kind: FailureKind, rejected: bool
) -> None:
    error = gmail_api.classify(status, _google(status, reason))
    assert (error.outcome, error.kind, error.rejected) == (outcome, kind, rejected)
    assert error.reply is not None and error.reply.enhanced == reason


# ---- the gate ----------------------------------------------------------------------------------


def test_the_gate_lets_four_requests_through_at_once_per_mailbox() -> None:
    gates = MailboxGates(TestClock(), limit=4)
    seen = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}

    async def request(key: str) -> None:
        async with gates.slot(key):
            seen[key] += 1
            most[key] = max(most[key], seen[key])
            await asyncio.sleep(0.01)
            seen[key] -= 1

    async def burst() -> None:
        await asyncio.gather(*(request(k) for k in "ab" * 10))

    asyncio.run(burst())
    asyncio.run(burst())  # a second event loop gets semaphores of its own
    assert most == {"a": 4, "b": 4}


def test_the_throttle_window_is_on_the_injected_clock() -> None:
    clock = TestClock()
    gates = MailboxGates(clock, limit=None)
    gates.block("m", 30)
    gates.block("m", 5)  # a shorter wait does not shorten the window
    assert gates.blocked_for("m") == 30
    clock.advance(seconds=29)
    assert gates.blocked_for("m") == 1
    clock.advance(seconds=1)
    assert gates.blocked_for("m") == 0 and gates.blocked_for("other") == 0


# ---- the retry decision and the hints ------------------------------------------------------------


def test_retry_after_decides_the_next_attempt() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    policy_ = RetryPolicy()
    result = AttemptResult(Outcome.TEMPORARY, 429, "throttled", 1, retry_after_s=30)
    decision = decide(result, ["a@b.c"], 1, now + timedelta(days=1), now, policy_)
    assert decision.status is Status.DEFERRED
    assert decision.next_attempt_at == now + timedelta(seconds=30)
    day = AttemptResult(Outcome.TEMPORARY, 429, "throttled", 1, retry_after_s=86400)
    capped = decide(day, ["a@b.c"], 1, now + timedelta(days=2), now, policy_)
    assert capped.next_attempt_at == now + policy_.cap


@pytest.mark.parametrize(
    ("transport", "kind", "reply", "app_only", "says"),
    [
        (
            "microsoft_graph",
            FailureKind.ACCESS_DENIED,
            Reply(403, "ErrorAccessDenied", ""),
            True,
            "New-ManagementRoleAssignment",
        ),
        (
            "microsoft_graph",
            FailureKind.ACCESS_DENIED,
            Reply(403, "ErrorAccessDenied", ""),
            False,
            "Send As",
        ),
        (
            "microsoft_graph",
            FailureKind.ACCESS_DENIED,
            Reply(None, "consent", ""),
            True,
            "admin consent",
        ),
        (
            "microsoft_graph",
            FailureKind.MAILBOX_NOT_FOUND,
            Reply(404, "ErrorInvalidUser", ""),
            True,
            "MailboxNotEnabledForRESTAPI",
        ),
        ("microsoft_graph", FailureKind.WRONG_AUDIENCE, None, False, "authentication.scope empty"),
        (
            "microsoft_graph",
            FailureKind.OAUTH2_TOKEN,
            Reply(None, "AADSTS65001", ""),
            False,
            "Grant admin consent",
        ),
        (
            "microsoft_graph",
            FailureKind.OAUTH2_TOKEN,
            Reply(None, "AADSTS999999", ""),
            False,
            "error?code=999999",
        ),
        (
            "microsoft_graph",
            FailureKind.THROTTLED,
            Reply(429, None, ""),
            True,
            "4 concurrent requests",
        ),
        ("microsoft_graph", FailureKind.TIMEOUT, None, True, "graph.microsoft.com"),
        (
            "gmail_api",
            FailureKind.ACCESS_DENIED,
            Reply(403, "insufficientPermissions", ""),
            False,
            "gmail.send",
        ),
        ("gmail_api", FailureKind.THROTTLED, Reply(429, "rateLimitExceeded", ""), False, "2,000"),
        ("gmail_api", FailureKind.TOO_LARGE, None, False, "35 MB"),
        ("gmail_api", FailureKind.NO_TOKEN_PROVIDER, None, False, "authorize it"),
    ],
)
def test_api_hints(
    transport: str, kind: FailureKind, reply: Reply | None, app_only: bool, says: str
) -> None:
    hint = hint_for("send", kind, reply, transport=transport, app_only=app_only)
    assert hint is not None and says in hint
    assert hint == api_hint(transport, kind, reply, app_only=app_only)


def test_http_statuses_never_meet_the_smtp_rules() -> None:
    # 404, 421-like or 535-like numbers from an API must not read as SMTP replies.
    for status in (404, 421, 451, 535, 552):
        hint = hint_for("send", FailureKind.REPLY, Reply(status, None, "x"), transport="gmail_api")
        assert hint is None or ("SMTP" not in hint and "try again later" not in hint)
    smtp = hint_for("send", FailureKind.REPLY, Reply(451, None, "x"))
    assert smtp is not None and "try again later" in smtp
