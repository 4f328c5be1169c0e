"""Delivery through a remote client agent (the mailgate side of the worker hand-off).

``RemoteTransport`` is the transport of configurations with ``remote_output`` enabled: its
``RemoteDeliverySession`` hands each message to the connected agent of that tenant and
client name, and turns the agent's report back into the same
``AttemptResult`` a direct SMTP delivery gives (the agent runs the same transport; its
``SendResult``/``TransportError`` cross the WebSocket unchanged). A lost agent is a temporary
failure: the message is retried, never lost.
"""

from __future__ import annotations

import base64
import time
from email.parser import BytesHeaderParser
from typing import Any

from mailgate.adapters.remote.codec import decode_outcome, server_spec
from mailgate.adapters.remote.hub import RemoteError, RemoteHub
from mailgate.adapters.remote.jobs import access_token, ms_since, not_connected
from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import SendResult
from mailgate.adapters.smtp.transport import from_send_result, from_transport_error
from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.ports import DeliverySession, SessionFailed, TokenProvider
from mailgate.schemas.email_server import ResolvedServer
from mailgate.schemas.remote import Deliver

# base64 grows by 4/3; the JSON around it is small.
_FRAME_OVERHEAD = 64 * 1024


def _message_id(raw: bytes) -> str | None:
    value = BytesHeaderParser().parsebytes(raw[: 64 * 1024]).get("Message-ID")
    return str(value)[:300] if value else None


class RemoteDeliverySession:
    """The worker's ``DeliverySession`` for one configuration delivered by an agent."""

    def __init__(
        self,
        hub: RemoteHub,
        server: ResolvedServer,
        client: str,
        tokens: TokenProvider | None,
        timeout_s: float,
    ) -> None:
        assert server.tenant_id is not None
        self.hub = hub
        self.server = server
        self.tenant_id = server.tenant_id
        self.client = client
        self.tokens = tokens
        self.timeout_s = timeout_s

    @property
    def usable(self) -> bool:
        return self.hub.is_connected(self.tenant_id, self.client)

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult:
        started = time.monotonic()
        limit = self.hub.max_frame_bytes(self.tenant_id, self.client)
        if limit is not None and len(raw) * 4 // 3 + _FRAME_OVERHEAD > limit:
            return AttemptResult(
                Outcome.PERMANENT,
                None,
                f"the message ({len(raw)} bytes) is larger than remote client {self.client} "
                f"accepts ({limit} bytes per frame, base64 included)",
                0,
                step="data",
            )
        message_id = _message_id(raw)
        raw_b64 = base64.b64encode(raw).decode("ascii")
        outcome: SendResult | TransportError | None = None
        # An OAuth2 access token the server rejects gets one fresh try: only mailgate can
        # refresh it (the agent never holds the refresh token), as the transport does itself.
        for force_refresh in (False, True):
            try:
                token = await access_token(self.server, self.tokens, force_refresh)
            except Exception as exc:
                return AttemptResult(
                    Outcome.TEMPORARY,
                    None,
                    f"could not get an OAuth2 access token: {type(exc).__name__}",
                    ms_since(started),
                    step="auth",
                )
            frame = Deliver(
                id="",
                message_id=message_id,
                server=server_spec(self.server, token),
                mail_from=mail_from,
                rcpt_to=rcpt_to,
                raw_b64=raw_b64,
            ).model_dump()
            try:
                report = await self._ask(frame)
            except RemoteError as exc:
                # Once the agent had the job, no report means it may have sent the message
                # (as a reply lost after the final dot): possibly delivered.
                return AttemptResult(
                    Outcome.TEMPORARY,
                    None,
                    str(exc),
                    ms_since(started),
                    step="data" if exc.after_send else "connect",
                    possibly_delivered=exc.after_send,
                )
            outcome = decode_outcome(report)
            if not (
                token and isinstance(outcome, TransportError) and outcome.kind == "auth_failed"
            ):
                break
        assert outcome is not None
        if isinstance(outcome, TransportError):
            return from_transport_error(outcome, ms_since(started))
        return from_send_result(outcome)

    async def _ask(self, frame: dict[str, Any]) -> dict[str, Any]:
        return await self.hub.call(
            lambda: self.hub.request(self.tenant_id, self.client, frame, self.timeout_s)
        )

    async def close(self) -> None:
        """Nothing to close here: the agent keeps (and closes) its own SMTP sessions."""


class RemoteTransport:
    """``ports.Transport`` for configurations with ``remote_output``: through their agent."""

    def __init__(self, hub: RemoteHub, timeout_s: float) -> None:
        self.hub = hub
        self.timeout_s = timeout_s

    async def open(self, server: ResolvedServer, tokens: TokenProvider | None) -> DeliverySession:
        client = server.remote_client
        assert client is not None, "only configurations with remote output come here"
        if server.tenant_id is None or not self.hub.is_connected(server.tenant_id, client):
            raise SessionFailed(
                AttemptResult(Outcome.TEMPORARY, None, not_connected(client), 0, step="connect")
            )
        return RemoteDeliverySession(self.hub, server, client, tokens, self.timeout_s)
