"""The Gmail API as a transport: the stored MIME message to
``POST /upload/gmail/v1/users/me/messages/send?uploadType=media`` as ``message/rfc822``
(Gmail API "Uploading attachments", simple upload: up to 35 MB), with the scope
``gmail.send``. Rate and quota answers (``429``, ``403`` with ``rateLimitExceeded``,
``userRateLimitExceeded``, ...) are temporary; ``401`` after one fresh token, and a token
without the send scope, need a new authorization.
"""

from __future__ import annotations

import json
from typing import Any

from mailgate.adapters.http_api.exchange import ApiCall, ApiError
from mailgate.adapters.http_api.jwt import TokenSummary, decode_claims
from mailgate.adapters.http_api.mime import with_bcc
from mailgate.adapters.http_api.transport import TokenCheck
from mailgate.domain.messages import Outcome
from mailgate.domain.pauses import classify_http
from mailgate.domain.transport import FailureKind, Reply
from mailgate.schemas.email_server import ResolvedServer

NAME = "the Gmail API"
MAX_MESSAGE = 35 * 1024 * 1024
# Gmail API "Usage limits" and "Resolve errors": these reasons mean "slow down", not "never".
RATE_REASONS = frozenset(
    {
        "rateLimitExceeded",
        "userRateLimitExceeded",
        "dailyLimitExceeded",
        "quotaExceeded",
        "concurrentLimitExceeded",
        "RESOURCE_EXHAUSTED",
    }
)
SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})


def error_of(body: bytes) -> tuple[str | None, str, set[str]]:
    """Google's error body as (the first reason, the message, every reason named):
    ``error.errors[].reason``, the ``ErrorInfo`` details' reasons, ``error.status``."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, " ".join(body.decode("utf-8", "replace").split())[:300], set()
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, "", set()
    named: list[Any] = [e.get("reason") for e in error.get("errors") or [] if isinstance(e, dict)]
    named += [d.get("reason") for d in error.get("details") or [] if isinstance(d, dict)]
    named.append(error.get("status"))
    reasons = [str(r) for r in named if r]
    return (reasons[0] if reasons else None), str(error.get("message") or ""), set(reasons)


def classify(status: int, body: bytes, *, retry_after_s: float | None = None) -> ApiError:
    """A Gmail API answer other than ``200`` as an ``ApiError``."""
    reason, message, reasons = error_of(body)
    reply = Reply(status, reason, message)
    text = f"Gmail API: {status} {reason or ''} {message}".replace("  ", " ").strip()

    def error(outcome: Outcome, kind: FailureKind, fix: str | None = None, **kw: Any) -> ApiError:
        return ApiError(
            outcome, "send", f"{text} ({fix})" if fix else text, kind=kind, reply=reply, **kw
        )

    pause = classify_http(status, reasons, retry_after_s)
    if status in (429, 503) or reasons & RATE_REASONS or pause is not None:
        return error(
            Outcome.TEMPORARY, FailureKind.THROTTLED, retry_after_s=retry_after_s, pause=pause
        )
    if status >= 500:
        return error(Outcome.TEMPORARY, FailureKind.REPLY, retry_after_s=retry_after_s)
    if status == 401:
        return error(
            Outcome.TEMPORARY,
            FailureKind.AUTH_FAILED,
            "Gmail refused a freshly refreshed token: authorize again",
            rejected=True,
        )
    if status == 403 and reasons & SCOPE_REASONS:
        return error(
            Outcome.TEMPORARY,
            FailureKind.ACCESS_DENIED,
            "the authorization lacks the gmail.send scope: authorize again",
            rejected=True,
        )
    if status == 403:
        return error(Outcome.PERMANENT, FailureKind.ACCESS_DENIED)
    if status == 404:
        return error(Outcome.PERMANENT, FailureKind.MAILBOX_NOT_FOUND)
    if status == 413:
        return error(Outcome.PERMANENT, FailureKind.TOO_LARGE)
    return error(Outcome.PERMANENT, FailureKind.REPLY)


class GmailApi:
    """``MailApi`` for the Gmail API (``MAILGATE_GMAIL_API_BASE_URL``)."""

    name = NAME
    concurrency: int | None = None

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def mailbox_key(self, server: ResolvedServer) -> str:
        return f"gmail {self.base} {(server.config.authentication.username or '').lower()}"

    def check_token(self, server: ResolvedServer, token: str) -> TokenCheck:
        claims = decode_claims(token)
        if claims is None:
            # Google's access tokens are opaque: what they may do shows when they are used.
            return TokenCheck(
                "a Google access token (opaque: Gmail checks its gmail.send scope in the send step)"
            )
        return TokenCheck(TokenSummary.of(claims).describe())

    async def deliver(
        self, call: ApiCall, server: ResolvedServer, rcpt_to: list[str], raw: bytes
    ) -> tuple[int, str]:
        mime = with_bcc(raw, rcpt_to)
        if len(mime) > MAX_MESSAGE:
            raise ApiError(
                Outcome.PERMANENT,
                "send",
                f"the message ({len(mime)} bytes) is larger than the Gmail API's 35 MB",
                kind=FailureKind.TOO_LARGE,
            )
        answer = await call.request(
            "POST",
            f"{self.base}/upload/gmail/v1/users/me/messages/send?uploadType=media",
            content=mime,
            headers={"Content-Type": "message/rfc822"},
        )
        if answer.status_code != 200:
            raise classify(
                answer.status_code, answer.content, retry_after_s=call.retry_after(answer)
            )
        try:
            sent_id = answer.json().get("id")
        except (ValueError, AttributeError):
            sent_id = None
        return 200, f"200 sent by Gmail as message {sent_id or '(no id)'}"
