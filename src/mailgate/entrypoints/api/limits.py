"""Request hygiene as plain ASGI middleware: a body size limit (checked before the body is
parsed) and no NUL characters in the URL.

The body is read here, up to the limit, and replayed to the application. Raising from inside
the application's ``receive`` does not work: FastAPI turns any exception while reading the
body into a 400, so a chunked upload without Content-Length would not get its 413.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class NoNulInUrl:
    """Refuse NUL characters (``%00``) in the path and the query string with a 400.

    PostgreSQL text cannot hold NUL at all: a path parameter such as a tenant name with a NUL
    would fail deep inside a query, as a 500, instead of as the client's mistake.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (
            "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")
        ):
            if scope["type"] == "http":
                await _send_problem(send, 400, "Bad request", "the URL contains a NUL character")
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away before sending the whole body: nothing to answer.
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        detail = f"the request body is larger than {self.max_bytes} bytes"
        await _send_problem(send, 413, "Payload too large", detail)


async def _send_problem(send: Send, status: int, title: str, detail: str) -> None:
    slug = {400: "bad-request", 413: "payload-too-large"}[status]
    body: dict[str, Any] = {
        "type": f"urn:mailgate:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
