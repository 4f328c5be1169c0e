"""Webhook delivery over HTTP (``ports.WebhookSender``): Standard Webhooks signatures, a total
deadline, no redirects, and the outbound address policy applied at connect time.

Signing is the ``standardwebhooks`` package (the specification's own reference library):
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
base64-decoded part of the ``whsec_`` secret.

The address policy is checked where the connection is made - on the addresses the host name
resolves to, in the outbound policy's httpcore network backend (``adapters/outbound.py``) -
not on the URL when it is saved: a name that resolves to a public address today may resolve
to 127.0.0.1 tomorrow (DNS rebinding), and a check at save time would not see it. Only
allowed addresses are connected to; TLS still verifies the certificate against the host name
(httpcore passes the name for SNI and verification, whatever address the socket went to).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
import time
from datetime import UTC, datetime

import certifi
import httpcore
import httpx
from standardwebhooks import Webhook

from mailgate.adapters.outbound import AsyncGuardedBackend, PolicySource, denied_reason
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


class HttpWebhookSender:
    """``ports.WebhookSender``: one client for the process (connections are kept alive per
    receiver), unbounded in the number of connections - the dispatcher bounds how many
    requests go to each endpoint, so a slow receiver cannot take the pool from others."""

    def __init__(
        self,
        policy: PolicySource,
        *,
        deadline_s: float = DEADLINE_S,
        ca_bundle: str | None = None,
    ) -> None:
        """``policy``: the webhooks' outbound policy, read on every new connection."""
        self.deadline_s = deadline_s
        self.policy = policy
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
            # async_guarded_transport's pool, without its limit of 10 connections: the
            # dispatcher bounds each endpoint, so slow receivers cannot take the pool.
            transport._pool = httpcore.AsyncConnectionPool(
                ssl_context=self.context,
                max_connections=None,
                keepalive_expiry=30.0,
                network_backend=AsyncGuardedBackend(self.policy),
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
        except httpx.HTTPError as exc:
            denied = denied_reason(exc)
            if denied is not None:
                return WebhookResponse(None, ms(), f"refused: {denied}")
            return WebhookResponse(None, ms(), f"{type(exc).__name__}: {exc}"[:500])
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
