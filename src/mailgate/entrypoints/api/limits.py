"""Request hygiene as plain ASGI middleware: a body size limit (checked before the body is
parsed) and a total deadline for reading the body, no NUL characters in the URL, and
``X-Content-Type-Options: nosniff`` on every answer.

The body is read here, up to the limit, and replayed to the application. Raising from inside
the application's ``receive`` does not work: FastAPI turns any exception while reading the
body into a 400, so a chunked upload without Content-Length would not get its 413.
"""

from __future__ import annotations

import asyncio
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


class NoSniff:
    """``X-Content-Type-Options: nosniff`` on every HTTP answer: a browser must not guess
    that a stored message (``.../raw``) or a problem document is HTML or script."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != NOSNIFF[0]]
                message = {**message, "headers": [*headers, NOSNIFF]}
            await send(message)

        await self.app(scope, receive, send_with_header)


NOSNIFF = (b"x-content-type-options", b"nosniff")


class BodyLimit:
    """At most ``max_bytes`` of body, read completely within ``timeout_s`` (a client that
    trickles its body gets a 408 instead of holding a connection and a task for ever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

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
        try:
            async with asyncio.timeout(self.timeout_s):
                complete = await self._read(receive, chunks)
        except TimeoutError:
            detail = f"the request body was not received within {self.timeout_s:g} s"
            await _send_problem(send, 408, "Request timeout", detail)
            return
        if complete is None:
            return  # the client went away before sending the whole body: nothing to answer
        if not complete:
            await self._reject(send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, chunks: list[bytes]) -> bool | None:
        """Read the body into ``chunks``: True when complete, False when too large, None
        when the client disconnected."""
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                return False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return True

    async def _reject(self, send: Send) -> None:
        detail = f"the request body is larger than {self.max_bytes} bytes"
        await _send_problem(send, 413, "Payload too large", detail)


async def _send_problem(send: Send, status: int, title: str, detail: str) -> None:
    slug = {400: "bad-request", 408: "request-timeout", 413: "payload-too-large"}[status]
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
