"""The suite's Microsoft Graph and Gmail API servers: HTTPS on 127.0.0.1 with the local
authorization server's CA (``tests/oauth_server.py``), strict where the real ones are.

- Only tokens the local authorization server issued and that are still live get through,
  for the right API: Graph checks the JWT's audience and permission (``scp`` Mail.Send for a
  delegated grant, ``roles`` for app-only, Mail.ReadWrite for drafts), the signed-in user or
  the app's mailbox scope (RBAC for Applications); Gmail checks the token came from the
  Google endpoint with a scope that may send.
- Graph: MIME ``sendMail`` (``text/plain``, base64, at most 4 MB per request), drafts from
  MIME, attachments under 3 MB, upload sessions (a pre-authenticated URL, ``PUT`` ranges of
  at most 4 MB in order with ``Content-Range``, no Authorization header), ``send``,
  ``DELETE``; ``404 ErrorInvalidUser`` for unknown mailboxes, ``403 ErrorAccessDenied``.
- Gmail: ``upload/gmail/v1/users/me/messages/send?uploadType=media`` with
  ``message/rfc822``, at most 35 MB; Google's error bodies.
- Both: throttling on demand (``429``/``503`` with ``Retry-After``, Gmail's rate-limit
  reasons), a delay per request, and the most concurrent requests seen per mailbox.
- What was "delivered" is kept: the recipients (To, Cc and Bcc headers, as the real APIs
  take them), the MIME as sent, and the copy other recipients see (no Bcc header).
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.oauth_server import GRAPH, AuthServer, RunningAuthServer, TokenInfo

MiB = 1024 * 1024
GRAPH_REQUEST_LIMIT = 4 * MiB
GMAIL_LIMIT = 35 * MiB
GMAIL_SEND_SCOPES = {"https://www.googleapis.com/auth/gmail.send", "https://mail.google.com/"}


@dataclass
class Delivered:
    """One message an API accepted."""

    mailbox: str
    recipients: list[str]
    bcc: list[str]
    sent: bytes
    """The MIME as mailgate sent it (with the Bcc header, if any)."""
    via: str
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(name, content type, bytes) added to a Graph draft."""

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.sent)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def seen_by_recipients(self) -> bytes:
        """The copy To and Cc recipients get: the provider drops the Bcc header."""
        return strip_bcc(self.sent)


def strip_bcc(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = re.split(rb"\r\n(?![ \t])", head)
    return b"\r\n".join(line for line in lines if not line.lower().startswith(b"bcc:")) + sep + body


def recipients_of(message: EmailMessage) -> tuple[list[str], list[str]]:
    def addresses(name: str) -> list[str]:
        return [a for _n, a in getaddresses([str(v) for v in message.get_all(name, [])]) if a]

    return addresses("To") + addresses("Cc") + addresses("Bcc"), addresses("Bcc")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


class Peer:
    """What both API servers share: request log, delay, throttling, concurrency count."""

    def __init__(self, auth: AuthServer) -> None:
        self.auth = auth
        self.base_url = ""
        self.reset()

    def reset(self) -> None:
        self.delivered: list[Delivered] = []
        self.requests: list[tuple[str, str, dict[str, str], int]] = []
        """(method, path, the request's headers, body size) of every request."""
        self.delay_s = 0.0
        self.inflight: Counter[str] = Counter()
        self.max_inflight: Counter[str] = Counter()
        self._throttles: list[tuple[int, dict[str, str], Any]] = []

    def throttle(self, times: int, status: int, body: Any, retry_after: str | None) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self._throttles.extend([(status, headers, body)] * times)

    def wait_for(self, n: int, timeout: float = 10) -> list[Delivered]:
        deadline = time.time() + timeout
        while len(self.delivered) < n:
            if time.time() > deadline:
                raise AssertionError(f"{len(self.delivered)} of {n} messages arrived")
            time.sleep(0.01)
        return self.delivered

    async def enter(self, request: Request, mailbox: str) -> Response | None:
        """Log, count and delay a request; the throttle's answer if one is due."""
        body = await request.body()
        self.requests.append((request.method, request.url.path, dict(request.headers), len(body)))
        self.inflight[mailbox] += 1
        self.max_inflight[mailbox] = max(self.max_inflight[mailbox], self.inflight[mailbox])
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self._throttles:
            status, headers, answer = self._throttles.pop(0)
            return _json(status, answer, headers)
        return None

    def leave(self, mailbox: str) -> None:
        self.inflight[mailbox] -= 1

    def bearer(self, request: Request) -> TokenInfo | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return None
        return self.auth.introspect(header[7:])


# ---- Microsoft Graph --------------------------------------------------------------------------


def _graph_error(status: int, code: str, message: str) -> Response:
    return _json(
        status,
        {"error": {"code": code, "message": message}},
        {"request-id": secrets.token_hex(8)},
    )


@dataclass
class Draft:
    mailbox: str
    mime: bytes
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)


@dataclass
class Upload:
    draft_id: str
    mailbox: str
    token: str
    name: str
    content_type: str
    size: int
    data: bytearray = field(default_factory=bytearray)
    ranges: list[tuple[int, int]] = field(default_factory=list)


class GraphPeer(Peer):
    def __init__(self, auth: AuthServer) -> None:
        super().__init__(auth)
        users = "/v1.0/users/{mailbox}"
        self.app = Starlette(
            routes=[
                Route(users + "/sendMail", self._send_mail, methods=["POST"]),
                Route(users + "/messages", self._create_draft, methods=["POST"]),
                Route(users + "/messages/{id}/attachments", self._attach, methods=["POST"]),
                Route(
                    users + "/messages/{id}/attachments/createUploadSession",
                    self._upload_session,
                    methods=["POST"],
                ),
                Route(users + "/messages/{id}/send", self._send_draft, methods=["POST"]),
                Route(users + "/messages/{id}", self._delete_draft, methods=["DELETE"]),
                Route("/upload/{session}", self._upload, methods=["PUT"]),
            ]
        )

    def reset(self) -> None:
        super().reset()
        self.mailboxes = {"sender@example.com"}
        self.drafts: dict[str, Draft] = {}
        self.uploads: dict[str, Upload] = {}
        self.deleted: list[str] = []
        self.refuse_uploads = False
        """Answer upload URLs 401, as when their embedded token has expired."""
        self.refuse_tokens = False
        """Answer every token 401, fresh or not (Graph will not take this app's tokens)."""
        self._faults: list[tuple[str, int, dict[str, str]]] = []

    def fail_next(self, path_suffix: str, status: int, retry_after: str | None = None) -> None:
        """The next request whose path ends so gets ``status`` (after the checks)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self._faults.append((path_suffix, status, headers))

    def throttle_graph(
        self, times: int = 1, status: int = 429, retry_after: str | None = "10"
    ) -> None:
        code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
        self.throttle(
            times, status, {"error": {"code": code, "message": "Too many requests"}}, retry_after
        )

    def _check(self, request: Request, mailbox: str, need: str) -> Response | None:
        """Graph's checks, in its order: token, audience, mailbox, permission, scope."""
        info = self.bearer(request)
        if info is None or not info.live or self.refuse_tokens:
            return _graph_error(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            )
        if info.audience != GRAPH:
            return _graph_error(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            )
        if mailbox.lower() not in self.mailboxes:
            return _graph_error(
                404, "ErrorInvalidUser", f"The requested user '{mailbox}' is invalid."
            )
        granted = set(info.roles if info.user is None else info.scopes)
        allowed_here = mailbox in info.app_mailboxes if info.user is None else info.user == mailbox
        if need not in granted or not allowed_here:
            return _graph_error(
                403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        return None

    async def _guarded(self, request: Request, need: str, handler: Any) -> Response:
        mailbox = request.path_params["mailbox"]
        try:
            early = await self.enter(request, mailbox)
            if early is not None:
                return early
            refused = self._check(request, mailbox, need)
            if refused is not None:
                return refused
            for fault in self._faults:
                suffix, status, headers = fault
                if request.url.path.endswith(suffix):
                    self._faults.remove(fault)
                    return _json(
                        status,
                        {"error": {"code": "ServiceUnavailable", "message": "try later"}},
                        headers,
                    )
            result: Response = await handler(request, mailbox)
            return result
        finally:
            self.leave(mailbox)

    async def _mime(self, request: Request) -> bytes | Response:
        if request.headers.get("content-type", "").split(";")[0] != "text/plain":
            return _graph_error(400, "ErrorMimeContentInvalid", "MIME content must be text/plain")
        body = await request.body()
        if len(body) > GRAPH_REQUEST_LIMIT:
            return _graph_error(413, "RequestEntityTooLarge", "The request is larger than 4 MB.")
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            return _graph_error(
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            )

    async def _send_mail(self, request: Request) -> Response:
        async def run(request: Request, mailbox: str) -> Response:
            mime = await self._mime(request)
            if isinstance(mime, Response):
                return mime
            return self._deliver(mailbox, mime, "sendMail", [])

        return await self._guarded(request, "Mail.Send", run)

    def _deliver(self, mailbox: str, mime: bytes, via: str, attachments: list[Any]) -> Response:
        message = BytesParser(policy=policy.default).parsebytes(mime)
        assert isinstance(message, EmailMessage)
        recipients, bcc = recipients_of(message)
        if not recipients:
            return _graph_error(
                400, "ErrorInvalidRecipients", "At least one recipient is not valid."
            )
        self.delivered.append(Delivered(mailbox, recipients, bcc, mime, via, attachments))
        return Response(status_code=202, headers={"request-id": secrets.token_hex(8)})

    async def _create_draft(self, request: Request) -> Response:
        async def run(request: Request, mailbox: str) -> Response:
            mime = await self._mime(request)
            if isinstance(mime, Response):
                return mime
            draft_id = "AAMk" + secrets.token_urlsafe(12) + "="
            self.drafts[draft_id] = Draft(mailbox, mime)
            return _json(201, {"id": draft_id, "isDraft": True})

        return await self._guarded(request, "Mail.ReadWrite", run)

    def _draft(self, request: Request, mailbox: str) -> Draft | Response:
        draft = self.drafts.get(request.path_params["id"])
        if draft is None or draft.mailbox != mailbox:
            return _graph_error(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return draft

    async def _attach(self, request: Request) -> Response:
        async def run(request: Request, mailbox: str) -> Response:
            draft = self._draft(request, mailbox)
            if isinstance(draft, Response):
                return draft
            if len(await request.body()) > GRAPH_REQUEST_LIMIT:
                return _graph_error(
                    413, "RequestEntityTooLarge", "The request is larger than 4 MB."
                )
            item = await request.json()
            data = base64.b64decode(item["contentBytes"])
            if len(data) >= 3 * MiB:
                return _graph_error(
                    400,
                    "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                    "use an upload session above 3 MB",
                )
            draft.attachments.append((item["name"], item["contentType"], data))
            return _json(201, {"id": secrets.token_hex(6)})

        return await self._guarded(request, "Mail.ReadWrite", run)

    async def _upload_session(self, request: Request) -> Response:
        async def run(request: Request, mailbox: str) -> Response:
            draft = self._draft(request, mailbox)
            if isinstance(draft, Response):
                return draft
            item = (await request.json())["AttachmentItem"]
            session, token = secrets.token_hex(8), secrets.token_urlsafe(24)
            self.uploads[session] = Upload(
                request.path_params["id"],
                mailbox,
                token,
                item["name"],
                item["contentType"],
                int(item["size"]),
            )
            return _json(
                201,
                {
                    "uploadUrl": f"{self.base_url}/upload/{session}?authtoken={token}",
                    "expirationDateTime": "2099-01-01T00:00:00Z",
                    "nextExpectedRanges": ["0-"],
                },
            )

        return await self._guarded(request, "Mail.ReadWrite", run)

    async def _upload(self, request: Request) -> Response:
        upload = self.uploads.get(request.path_params["session"])
        mailbox = upload.mailbox if upload else "?"
        try:
            early = await self.enter(request, mailbox)
            if early is not None:
                return early
            if (
                upload is None
                or request.query_params.get("authtoken") != upload.token
                or self.refuse_uploads
            ):
                return _graph_error(
                    401, "InvalidAuthenticationToken", "The upload URL's token is invalid."
                )
            if "authorization" in request.headers:
                return _graph_error(
                    400,
                    "ErrorInvalidRequest",
                    "Do not send an Authorization header to an upload URL.",
                )
            found = re.fullmatch(
                r"bytes (\d+)-(\d+)/(\d+)", request.headers.get("content-range", "")
            )
            body = await request.body()
            if found is None:
                return _graph_error(400, "ErrorInvalidRange", "Content-Range missing or malformed.")
            start, end, total = (int(g) for g in found.groups())
            if total != upload.size or start != len(upload.data) or end - start + 1 != len(body):
                return _graph_error(416, "ErrorInvalidRange", "The range is not the one expected.")
            if len(body) > 4 * MiB:
                return _graph_error(413, "RequestEntityTooLarge", "At most 4 MB per range.")
            upload.data.extend(body)
            upload.ranges.append((start, end))
            if len(upload.data) < upload.size:
                return _json(200, {"nextExpectedRanges": [f"{len(upload.data)}-"]})
            draft = self.drafts[upload.draft_id]
            draft.attachments.append((upload.name, upload.content_type, bytes(upload.data)))
            return Response(
                status_code=201,
                headers={"Location": f"{self.base_url}/attachments/{secrets.token_hex(6)}"},
            )
        finally:
            self.leave(mailbox)

    async def _send_draft(self, request: Request) -> Response:
        async def run(request: Request, mailbox: str) -> Response:
            draft = self._draft(request, mailbox)
            if isinstance(draft, Response):
                return draft
            del self.drafts[request.path_params["id"]]
            return self._deliver(mailbox, draft.mime, "draft", draft.attachments)

        return await self._guarded(request, "Mail.Send", run)

    async def _delete_draft(self, request: Request) -> Response:
        async def run(request: Request, mailbox: str) -> Response:
            if self.drafts.pop(request.path_params["id"], None) is None:
                return _graph_error(
                    404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            self.deleted.append(request.path_params["id"])
            return Response(status_code=204)

        return await self._guarded(request, "Mail.ReadWrite", run)


# ---- the Gmail API ----------------------------------------------------------------------------


def _google_error(status: int, reason: str, message: str, state: str) -> Response:
    return _json(
        status,
        {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
                "status": state,
            }
        },
    )


class GmailPeer(Peer):
    def __init__(self, auth: AuthServer) -> None:
        super().__init__(auth)
        self.app = Starlette(
            routes=[
                Route("/upload/gmail/v1/users/{user}/messages/send", self._send, methods=["POST"])
            ]
        )

    def throttle_gmail(
        self,
        times: int = 1,
        status: int = 429,
        reason: str = "rateLimitExceeded",
        retry_after: str | None = None,
    ) -> None:
        message = "User-rate limit exceeded." if "Rate" in reason else "Rate Limit Exceeded"
        state = "RESOURCE_EXHAUSTED" if status == 429 else "PERMISSION_DENIED"
        body = {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "usageLimits", "reason": reason}],
                "status": state,
            }
        }
        self.throttle(times, status, body, retry_after)

    async def _send(self, request: Request) -> Response:
        info = self.bearer(request)
        user = info.user if info is not None and info.user else "?"
        try:
            early = await self.enter(request, user)
            if early is not None:
                return early
            if info is None or not info.live or not info.path.startswith("/google"):
                return _google_error(
                    401,
                    "authError",
                    "Request had invalid authentication credentials.",
                    "UNAUTHENTICATED",
                )
            if not set(info.scope.split()) & GMAIL_SEND_SCOPES:
                return _google_error(
                    403,
                    "insufficientPermissions",
                    "Request had insufficient authentication scopes.",
                    "PERMISSION_DENIED",
                )
            if (
                request.path_params["user"] != "me"
                or request.query_params.get("uploadType") != "media"
            ):
                return _google_error(
                    400, "invalidArgument", "Use users/me and uploadType=media.", "INVALID_ARGUMENT"
                )
            if request.headers.get("content-type") != "message/rfc822":
                return _google_error(
                    400, "invalidArgument", "Media type must be message/rfc822.", "INVALID_ARGUMENT"
                )
            mime = await request.body()
            if len(mime) > GMAIL_LIMIT:
                return _google_error(
                    413, "uploadTooLarge", "Media is larger than 35 MB.", "INVALID_ARGUMENT"
                )
            message = BytesParser(policy=policy.default).parsebytes(mime)
            assert isinstance(message, EmailMessage)
            recipients, bcc = recipients_of(message)
            if not recipients:
                return _google_error(
                    400, "invalidArgument", "Recipient address required", "INVALID_ARGUMENT"
                )
            self.delivered.append(Delivered(user, recipients, bcc, mime, "media"))
            return _json(
                200,
                {
                    "id": secrets.token_hex(8),
                    "threadId": secrets.token_hex(8),
                    "labelIds": ["SENT"],
                },
            )
        finally:
            self.leave(user)


# ---- running them ------------------------------------------------------------------------------


class Served:
    """An app on HTTPS at 127.0.0.1 in a thread, with a certificate from ``ca``."""

    def __init__(self, app: Any, ca: trustme.CA, tmp: Path, name: str) -> None:
        pem = tmp / f"{name}.pem"
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(pem)
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                ssl_certfile=str(pem),
                ssl_keyfile=str(pem),
                log_level="warning",
                lifespan="off",
                limit_concurrency=None,
            )
        )
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve()), daemon=True
        )
        self.base_url = ""

    def start(self) -> str:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("a test API server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"https://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@dataclass
class ApiPeers:
    graph: GraphPeer
    gmail: GmailPeer

    def settings(self) -> dict[str, Any]:
        """``Settings`` overrides pointing mailgate at these servers."""
        return {"graph_base_url": self.graph.base_url, "gmail_api_base_url": self.gmail.base_url}


@pytest.fixture(scope="session")
def _api_peers_running(
    tmp_path_factory: pytest.TempPathFactory, _oauth_server_running: RunningAuthServer
) -> Iterator[ApiPeers]:
    tmp = tmp_path_factory.mktemp("api-peers")
    auth = _oauth_server_running.server
    peers = ApiPeers(GraphPeer(auth), GmailPeer(auth))
    served = [
        Served(peers.graph.app, _oauth_server_running.ca, tmp, "graph"),
        Served(peers.gmail.app, _oauth_server_running.ca, tmp, "gmail"),
    ]
    peers.graph.base_url = served[0].start()
    peers.gmail.base_url = served[1].start()
    yield peers
    for s in served:
        s.stop()


@pytest.fixture
def api_peers(_api_peers_running: ApiPeers, oauth_server: RunningAuthServer) -> ApiPeers:
    """The session's Graph and Gmail servers, reset for this test (with the OAuth2 server)."""
    _api_peers_running.graph.reset()
    _api_peers_running.gmail.reset()
    return _api_peers_running
