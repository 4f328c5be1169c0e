"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 that checks every
request's Standard Webhooks signature (by hand, with ``hmac``: independent of the library
mailgate signs with), records what arrived, and fails, hangs, redirects or disappears on
demand.

    receiver = WebhookReceiver().start()
    receiver.secret = created["secret"]
    receiver.fail(2, status=503)          # the next two requests get a 503
    receiver.wait_for(lambda got: len(got) >= 3)
    receiver.stop()                        # gone: connections are refused
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    verified: bool
    answered: int
    path: str

    @property
    def type(self) -> str:
        return str(self.body.get("type"))

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.body.get("data", {})
        return data


def signature_ok(secret: str, webhook_id: str, timestamp: str, body: bytes, header: str) -> bool:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in header.split(" ")
    )


@dataclass
class WebhookReceiver:
    secret: str = ""
    received: list[Received] = field(default_factory=list)
    """Every request that was answered 2xx (the deliveries that count)."""
    requests: list[Received] = field(default_factory=list)
    """Every request, whatever it was answered."""
    _failures: list[int] = field(default_factory=list)
    hang_s: float = 0.0
    redirect_to: str | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def start(self, port: int = 0) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                wid = self.headers.get("webhook-id", "")
                ts = self.headers.get("webhook-timestamp", "")
                ok = bool(receiver.secret) and signature_ok(
                    receiver.secret, wid, ts, body, self.headers.get("webhook-signature", "")
                )
                with receiver._lock:
                    status = receiver._failures.pop(0) if receiver._failures else 200
                if receiver.redirect_to is not None:
                    status = 302
                if not ok:
                    status = 401
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = {}
                item = Received(wid, int(ts or 0), parsed, ok, status, self.path)
                with receiver._lock:
                    receiver.requests.append(item)
                    if 200 <= status < 300:
                        receiver.received.append(item)
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", receiver.redirect_to or "/")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops connections under concurrency

        self._server = Server(("127.0.0.1", port or self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def fail(self, times: int, status: int = 500) -> None:
        with self._lock:
            self._failures.extend([status] * times)

    def stop(self) -> None:
        """Go away: the port refuses connections from now on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(
        self, condition: Callable[[list[Received]], bool], timeout: float = 10.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                got = list(self.received)
            if condition(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: condition not met; got {len(got)} events")
            time.sleep(0.02)
