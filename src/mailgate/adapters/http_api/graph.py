"""Microsoft Graph as a transport: the stored MIME message, base64-encoded, to
``POST /v1.0/users/{mailbox}/sendMail`` (Graph "Send Outlook messages in MIME format").

- Up to 4 MB per request (Graph's request limit; base64 counts): one ``sendMail``.
- Larger, up to 150 MB: a draft of the message without its attachments
  (``POST /users/{mailbox}/messages``, MIME too), each attachment added - under 3 MB by
  ``POST .../attachments``, else through an upload session (``createUploadSession``, then
  ``PUT`` ranges of at most 4 MB with ``Content-Range`` to the pre-authenticated upload URL,
  without the Authorization header) - then ``POST .../send``. The draft needs
  ``Mail.ReadWrite`` besides ``Mail.Send`` ("Attach large files to Outlook messages").
- ``202`` is delivered to Exchange. ``429``/``503``/``504`` are temporary with their
  ``Retry-After``; ``401`` after one fresh token is an authorization problem; ``403``
  (``ErrorAccessDenied``) and ``404`` (``ErrorInvalidUser``) fail the message.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from mailgate.adapters.http_api.exchange import ApiCall, ApiError
from mailgate.adapters.http_api.jwt import TokenSummary, decode_claims
from mailgate.adapters.http_api.mime import Attachment, split_for_draft, with_bcc
from mailgate.adapters.http_api.transport import TokenCheck
from mailgate.domain.messages import Outcome
from mailgate.domain.pauses import classify_http
from mailgate.domain.transport import FailureKind, Reply
from mailgate.schemas.email_server import ResolvedServer

NAME = "Microsoft Graph"
REQUEST_LIMIT = 4 * 1024 * 1024
"""Bytes in one request's body (Graph: "4 MB", base64 included)."""
MAX_MESSAGE = 150 * 1024 * 1024
SMALL_ATTACHMENT = 3 * 1024 * 1024
"""Attachments under this are added in one request; larger ones through an upload session."""
CHUNK = 12 * 320 * 1024
"""Bytes per upload range: under 4 MB, in whole 320 KiB units as Microsoft's upload
sessions prefer."""
CONCURRENCY = 4
"""Graph's limit of concurrent requests per app and mailbox (Outlook service limits)."""
AUDIENCES = frozenset(
    {
        "https://graph.microsoft.com",
        "https://graph.microsoft.com/",
        "00000003-0000-0000-c000-000000000000",  # Graph's application id
    }
)
SEND_PERMISSIONS = frozenset({"Mail.Send", "Mail.Send.Shared"})
DRAFT_PERMISSIONS = frozenset({"Mail.ReadWrite", "Mail.ReadWrite.Shared"})

# The fix for each refusal, short enough for a message's last_error; the server test's hints
# (services/diagnosis/hints.py) say more.
_FIX_403_APP = (
    "the app needs Mail.Send for this mailbox: an Exchange RBAC for Applications assignment "
    "'Application Mail.Send' scoped to it, or the Microsoft Graph application permission "
    "Mail.Send with admin consent"
)
_FIX_403_USER = (
    "the signed-in account must be this mailbox or have Send As permission on it, and "
    "have consented to Mail.Send"
)
_FIX_403_DRAFT = (
    "messages above 4 MB go through a draft, which also needs the Mail.ReadWrite permission"
)
_FIX_404 = "check authentication.username: the mailbox's address in Exchange Online"


# ---- answers (pure) ---------------------------------------------------------------------------


def error_of(body: bytes) -> tuple[str | None, str]:
    """Graph's error body ``{"error": {"code": ..., "message": ...}}`` as (code, message)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, " ".join(body.decode("utf-8", "replace").split())[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    message = error.get("message")
    return (str(code) if code else None), (str(message) if message else "")


def classify(
    status: int,
    body: bytes,
    *,
    retry_after_s: float | None = None,
    app_only: bool = False,
    drafting: bool = False,
) -> ApiError:
    """A Graph answer other than success as an ``ApiError`` (outcome, kind, the reply)."""
    code, message = error_of(body)
    reply = Reply(status, code, message)
    text = f"{NAME}: {status} {code or ''} {message}".replace("  ", " ").strip()

    def error(outcome: Outcome, kind: FailureKind, fix: str | None = None, **kw: Any) -> ApiError:
        detail = f"{text} ({fix})" if fix else text
        return ApiError(outcome, "send", detail, kind=kind, reply=reply, **kw)

    pause = classify_http(status, {code} if code else set(), retry_after_s)
    quota = code is not None and "QuotaExceeded" in code
    if status in (429, 503, 504) or quota or pause is not None:
        return error(
            Outcome.TEMPORARY, FailureKind.THROTTLED, retry_after_s=retry_after_s, pause=pause
        )
    if status == 401:
        return error(
            Outcome.TEMPORARY,
            FailureKind.AUTH_FAILED,
            "Graph refused a freshly refreshed token: an authorization problem; "
            + ("check the app's permissions and admin consent" if app_only else "authorize again"),
            rejected=True,
        )
    if status == 403:
        if code == "ErrorSendAsDenied":
            return error(
                Outcome.PERMANENT,
                FailureKind.ACCESS_DENIED,
                "the mailbox may not send as this From address: use the mailbox's own address "
                "or grant it Send As",
            )
        fix = _FIX_403_DRAFT if drafting else (_FIX_403_APP if app_only else _FIX_403_USER)
        return error(Outcome.PERMANENT, FailureKind.ACCESS_DENIED, fix)
    if status == 404 and code != "ErrorItemNotFound":
        return error(Outcome.PERMANENT, FailureKind.MAILBOX_NOT_FOUND, _FIX_404)
    if status == 413:
        return error(Outcome.PERMANENT, FailureKind.TOO_LARGE)
    if status >= 500 or status in (404, 408, 409):
        return error(Outcome.TEMPORARY, FailureKind.REPLY)
    return error(Outcome.PERMANENT, FailureKind.REPLY)


def next_range_start(answer: Any, default: int) -> int:
    """Where an upload session wants the next range to start (``nextExpectedRanges``:
    ``["2097152-"]`` or ``["2097152"]``)."""
    ranges = answer.get("nextExpectedRanges") if isinstance(answer, dict) else None
    if not isinstance(ranges, list) or not ranges:
        return default
    head = str(ranges[0]).split("-", 1)[0]
    return int(head) if head.isdigit() else default


# ---- the API ----------------------------------------------------------------------------------


class GraphApi:
    """``MailApi`` for Microsoft Graph (``MAILGATE_GRAPH_BASE_URL``)."""

    name = NAME
    concurrency: int | None = CONCURRENCY

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def users(self, server: ResolvedServer) -> str:
        mailbox = server.config.authentication.username or ""
        return f"{self.base}/v1.0/users/{quote(mailbox, safe='@')}"

    def mailbox_key(self, server: ResolvedServer) -> str:
        return f"graph {self.base} {(server.config.authentication.username or '').lower()}"

    def check_token(self, server: ResolvedServer, token: str) -> TokenCheck:
        claims = decode_claims(token)
        if claims is None:
            return TokenCheck(
                "an opaque access token (not a JWT): its audience and permissions show in "
                "the send step"
            )
        summary = TokenSummary.of(claims)
        detail = summary.describe()
        app_only = server.config.authentication.grant == "client_credentials"
        if summary.audience not in AUDIENCES:
            return TokenCheck(
                detail,
                ApiError(
                    Outcome.TEMPORARY,
                    "token",
                    f"the token is for {summary.audience or 'no audience'}, not Microsoft Graph",
                    kind=FailureKind.WRONG_AUDIENCE,
                    reply=Reply(None, None, f"aud {summary.audience}"),
                ),
            )
        granted = set(summary.roles if app_only else summary.scopes)
        warnings = []
        if app_only and not granted & SEND_PERMISSIONS:
            # Exchange RBAC for Applications grants are not in the token: an app scoped that
            # way (and without the tenant-wide Entra grant) has no roles, and still sends.
            warnings.append(
                "the token carries no application permission Mail.Send: sending works only if "
                "an Exchange RBAC for Applications role assignment ('Application Mail.Send') "
                "covers this mailbox; the send step shows whether one does"
            )
        elif not granted & SEND_PERMISSIONS:
            return TokenCheck(
                detail,
                ApiError(
                    Outcome.TEMPORARY,
                    "token",
                    "the token carries no delegated permission (scp) Mail.Send",
                    kind=FailureKind.ACCESS_DENIED,
                    reply=Reply(None, "consent", "scp"),
                ),
            )
        if granted & SEND_PERMISSIONS and not granted & DRAFT_PERMISSIONS:
            what = "application permission (roles)" if app_only else "delegated permission (scp)"
            warnings.append(
                "messages above 4 MB are sent through a draft, which needs Mail.ReadWrite: "
                f"this token has no such {what}, so they would fail"
            )
        return TokenCheck(detail, warnings=warnings)

    async def deliver(
        self, call: ApiCall, server: ResolvedServer, rcpt_to: list[str], raw: bytes
    ) -> tuple[int, str]:
        mime = with_bcc(raw, rcpt_to)
        if len(mime) > MAX_MESSAGE:
            raise ApiError(
                Outcome.PERMANENT,
                "send",
                f"the message ({len(mime)} bytes) is larger than Graph's 150 MB",
                kind=FailureKind.TOO_LARGE,
            )
        body = base64.b64encode(mime)
        app_only = server.config.authentication.grant == "client_credentials"
        if len(body) <= REQUEST_LIMIT:
            answer = await call.request(
                "POST",
                self.users(server) + "/sendMail",
                content=body,
                headers={"Content-Type": "text/plain"},
            )
            self._expect(call, answer, 202, app_only)
            return 202, f"202 accepted by {NAME} for {len(rcpt_to)} recipient(s)"
        return await self._through_draft(call, server, mime, app_only)

    async def _through_draft(
        self, call: ApiCall, server: ResolvedServer, mime: bytes, app_only: bool
    ) -> tuple[int, str]:
        draft, attachments = split_for_draft(mime)
        draft_b64 = base64.b64encode(draft)
        if len(draft_b64) > REQUEST_LIMIT:
            raise ApiError(
                Outcome.PERMANENT,
                "send",
                "the message's text and headers alone exceed Graph's 4 MB request limit "
                "(only attachments can be added to a draft piece by piece)",
                kind=FailureKind.TOO_LARGE,
            )
        messages = self.users(server) + "/messages"
        answer = await call.request(
            "POST", messages, content=draft_b64, headers={"Content-Type": "text/plain"}
        )
        self._expect(call, answer, 201, app_only, drafting=True)
        draft_id = _json(answer).get("id")
        if not isinstance(draft_id, str) or not draft_id:
            raise ApiError(Outcome.TEMPORARY, "send", f"{NAME} created a draft without an id")
        item = f"{messages}/{quote(draft_id, safe='')}"
        try:
            for attachment in attachments:
                await self._attach(call, item, attachment, app_only)
            answer = await call.request("POST", item + "/send")
            self._expect(call, answer, 202, app_only, drafting=True)
        except ApiError:
            await self._discard(call, item)
            raise
        total = sum(len(a.data) for a in attachments)
        return 202, (
            f"202 accepted by {NAME} (a draft with {len(attachments)} attachment(s), "
            f"{total} bytes, then send)"
        )

    async def _attach(
        self, call: ApiCall, item: str, attachment: Attachment, app_only: bool
    ) -> None:
        meta: dict[str, Any] = {
            "name": attachment.name,
            "contentType": attachment.content_type,
            "isInline": attachment.inline,
        }
        if attachment.content_id:
            meta["contentId"] = attachment.content_id
        size = len(attachment.data)
        if size < SMALL_ATTACHMENT:
            answer = await call.request(
                "POST",
                item + "/attachments",
                json={
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    **meta,
                    "contentBytes": base64.b64encode(attachment.data).decode("ascii"),
                },
            )
            self._expect(call, answer, 201, app_only, drafting=True)
            return
        answer = await call.request(
            "POST",
            item + "/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", **meta, "size": size}},
        )
        self._expect(call, answer, 201, app_only, drafting=True)
        upload_url = _json(answer).get("uploadUrl")
        if not isinstance(upload_url, str) or urlsplit(upload_url).scheme != "https":
            raise ApiError(
                Outcome.TEMPORARY, "send", f"{NAME} answered an upload session without an https URL"
            )
        await self._upload(call, upload_url, attachment.data)

    async def _upload(self, call: ApiCall, url: str, data: bytes) -> None:
        """PUT the ranges (the URL carries its own token: no Authorization header)."""
        size, start = len(data), 0
        for _ in range(2 * (size // CHUNK + 2)):  # a peer that never advances cannot loop us
            end = min(start + CHUNK, size)
            answer = await call.request(
                "PUT",
                url,
                content=data[start:end],
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {start}-{end - 1}/{size}",
                },
                authorized=False,
            )
            if answer.status_code == 201:
                return
            if answer.status_code == 401:  # the URL's own token, not the configuration's
                raise ApiError(
                    Outcome.TEMPORARY,
                    "send",
                    f"{NAME}: 401 the upload session's URL was refused (expired?)",
                    reply=Reply(401, None, "upload URL refused"),
                )
            if answer.status_code != 200:
                raise classify(
                    answer.status_code,
                    answer.content,
                    retry_after_s=call.retry_after(answer),
                    drafting=True,
                )
            following = next_range_start(_json(answer), end)
            if not start < following <= size:
                raise ApiError(
                    Outcome.TEMPORARY,
                    "send",
                    f"the upload session expects byte {following} next after {start}-{end - 1}",
                )
            start = following
        raise ApiError(Outcome.TEMPORARY, "send", "the upload session never completed")

    async def _discard(self, call: ApiCall, item: str) -> None:
        """Delete a draft that will not be sent (best effort: a retry makes a new one)."""
        with contextlib.suppress(ApiError):
            await call.request("DELETE", item, cleanup=True)

    @staticmethod
    def _expect(
        call: ApiCall,
        answer: httpx.Response,
        status: int,
        app_only: bool,
        *,
        drafting: bool = False,
    ) -> None:
        if answer.status_code == status:
            return
        raise classify(
            answer.status_code,
            answer.content,
            retry_after_s=call.retry_after(answer),
            app_only=app_only,
            drafting=drafting,
        )


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        data = answer.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
