"""Which transport delivers a configuration's mail.

A configuration with ``remote_output`` goes through its agent; every other one through the
transport it names (``smtp`` today; the HTTP mail APIs plug in here as further entries).
The router is itself a ``ports.Transport``, so the dispatcher, the system mailer and the
tests see one port whatever the configuration.
"""

from __future__ import annotations

from collections.abc import Mapping

from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.ports import DeliverySession, SessionFailed, TokenProvider, Transport
from mailgate.schemas.email_server import ResolvedServer

DEFAULT_TRANSPORT = "smtp"


class TransportRouter:
    def __init__(self, direct: Mapping[str, Transport], remote: Transport | None = None) -> None:
        self.direct = dict(direct)
        self.remote = remote

    def transport_for(self, server: ResolvedServer) -> Transport:
        if server.remote_client is not None:
            if self.remote is None:
                raise _unavailable("delivery through remote clients is not available here")
            return self.remote
        kind = str(getattr(server.config, "transport", DEFAULT_TRANSPORT))
        transport = self.direct.get(kind)
        if transport is None:
            raise _unavailable(f"transport {kind!r} is not available in this installation")
        return transport

    async def open(self, server: ResolvedServer, tokens: TokenProvider | None) -> DeliverySession:
        return await self.transport_for(server).open(server, tokens)


def _unavailable(text: str) -> SessionFailed:
    # Temporary: a process that can deliver it (an API process with the agent) may take it.
    return SessionFailed(AttemptResult(Outcome.TEMPORARY, None, text, 0, step="connect"))
