"""A real SMTP submission server for tests: aiosmtpd on 127.0.0.1 (ephemeral port) with
STARTTLS (a ``trustme`` certificate) and AUTH PLAIN/LOGIN, keeping what it accepts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class SmtpPeer:
    host: str
    port: int
    ca_pem: str
    username: str
    password: str
    messages: list[Any]

    def wait_for(self, predicate: Any, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for env in list(self.messages):
                if predicate(env):
                    return env
            time.sleep(0.1)
        raise AssertionError(f"no matching message arrived; got {len(self.messages)}")


@pytest.fixture(scope="session")
def smtp_peer() -> Iterator[SmtpPeer]:
    """An SMTP submission server on 127.0.0.1 (ephemeral port) that requires STARTTLS and
    AUTH; it keeps every accepted message in ``messages``."""
    import asyncio
    import ssl

    import trustme
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_ctx)
    user, password = "sender@example.com", "right-password-42"
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 2.0.0 OK queued"

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == user
            and data.password.decode() == password
        )
        return AuthResult(success=ok)

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def factory() -> SMTP:
        return SMTP(
            Handler(),
            hostname="mail.example.test",
            tls_context=server_ctx,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=True,
        )

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder["server"] = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    port = holder["server"].sockets[0].getsockname()[1]
    yield SmtpPeer("127.0.0.1", port, ca.cert_pem.bytes().decode(), user, password, received)
    loop.call_soon_threadsafe(holder["server"].close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
