"""Webhook delivery over HTTP (``ports.WebhookSender``): Standard Webhooks signatures, a total
deadline, no redirects, and the outbound address policy applied at connect time.

Signing is the ``standardwebhooks`` package (the specification's own reference library):
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
base64-decoded part of the ``whsec_`` secret.

The address policy is checked where the connection is made - on the addresses the host name
resolves to, in an httpcore network backend of our own - not on the URL when it is saved: a
name that resolves to a public address today may resolve to 127.0.0.1 tomorrow (DNS
rebinding), and a check at save time would not see it. Only allowed addresses are connected
to; TLS still verifies the certificate against the host name (httpcore passes the name for
SNI and verification, whatever address the socket went to).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import certifi
import httpcore
import httpx
from standardwebhooks import Webhook

from mailgate.domain.addresses import AddressCheck, IPAddress, refusal
from mailgate.domain.events import WebhookResponse

USER_AGENT = "mailgate-webhooks"
SECRET_PREFIX = "whsec_"
DEADLINE_S = 10.0


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def signature_headers(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``."""
    when = datetime.fromtimestamp(timestamp, UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign(event_id, when, body.decode("utf-8")),
    }


class DestinationDenied(httpcore.ConnectError):
    """The host resolved to addresses the outbound policy refuses (nothing was sent)."""


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, drops the addresses the policy refuses, and connects to the
    first allowed one that answers."""

    def __init__(self, checks: Sequence[AddressCheck]) -> None:
        self.checks = list(checks)
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if ip not in addresses:
                addresses.append(ip)
        reasons = [(ip, refusal(ip, self.checks)) for ip in addresses]
        allowed = [ip for ip, why in reasons if why is None]
        if not allowed:
            why = "; ".join(str(w) for _ip, w in reasons) or "no address"
            raise DestinationDenied(f"{host}: refused by the outbound policy ({why})")
        last: Exception | None = None
        for ip in allowed:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class HttpWebhookSender:
    """``ports.WebhookSender``: one client for the process (connections are kept alive per
    receiver), unbounded in the number of connections - the dispatcher bounds how many
    requests go to each endpoint, so a slow receiver cannot take the pool from others."""

    def __init__(
        self,
        checks: Sequence[AddressCheck],
        *,
        deadline_s: float = DEADLINE_S,
        ca_bundle: str | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        self.checks = list(checks)
        self.context = ssl.create_default_context(cafile=certifi.where())
        if ca_bundle:
            self.context.load_verify_locations(cafile=ca_bundle)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """The client of the running event loop (its connections belong to that loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            transport = httpx.AsyncHTTPTransport(verify=self.context, trust_env=False)
            # httpx takes no network backend: swap in a pool with ours.
            transport._pool = httpcore.AsyncConnectionPool(
                ssl_context=self.context,
                max_connections=None,
                keepalive_expiry=30.0,
                network_backend=_GuardedBackend(self.checks),
            )
            self._client = httpx.AsyncClient(
                transport=transport,
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.deadline_s),
                headers={"User-Agent": USER_AGENT},
            )
            self._loop = loop
        return self._client

    async def send(
        self, url: str, secret: str, event_id: str, timestamp: int, body: bytes
    ) -> WebhookResponse:
        headers = {
            "Content-Type": "application/json",
            **signature_headers(secret, event_id, timestamp, body),
        }
        started = time.monotonic()

        def ms() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            async with asyncio.timeout(self.deadline_s):
                async with self.client.stream("POST", url, content=body, headers=headers) as r:
                    code = r.status_code
                    # Read a little of the answer for the log; never wait for a large one.
                    preview = b""
                    async for chunk in r.aiter_bytes():
                        preview += chunk
                        if len(preview) >= 200:
                            break
        except TimeoutError:
            return WebhookResponse(None, ms(), f"no answer within {self.deadline_s:g} s")
        except DestinationDenied as exc:
            return WebhookResponse(None, ms(), str(exc))
        except httpx.HTTPError as exc:
            return WebhookResponse(None, ms(), f"{type(exc).__name__}: {exc}"[:500] or "error")
        error = None
        if not 200 <= code < 300:
            text = preview[:200].decode("utf-8", "replace").strip()
            kind = "a redirect (not followed)" if 300 <= code < 400 else f"HTTP {code}"
            error = f"{kind}: {text}" if text else kind
        return WebhookResponse(code, ms(), error)

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
