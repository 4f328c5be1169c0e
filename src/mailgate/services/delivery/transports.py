"""Which transport delivers (and tests) a configuration's mail.

A configuration with ``remote_output`` goes through its agent; every other one through the
transport it names: ``smtp``, ``microsoft_graph`` or ``gmail_api`` (README "Delivery
transports"). The router is itself a ``ports.Transport`` and a ``ports.Prober``, so the
dispatcher, the system mailer, the server test and the tests see one port whatever the
configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.domain.transport import Step
from mailgate.ports import (
    DeliverySession,
    Probe,
    Prober,
    SessionFailed,
    TokenProvider,
    Transport,
)
from mailgate.schemas.email_server import ResolvedServer

DEFAULT_TRANSPORT = "smtp"


class DirectTransport(Transport, Prober, Protocol):
    """A transport mailgate speaks itself: it delivers (``open``) and tests (``probe``)."""


class TransportRouter:
    def __init__(
        self, direct: Mapping[str, DirectTransport], remote: Transport | None = None
    ) -> None:
        self.direct = dict(direct)
        self.remote = remote

    def _direct_for(self, server: ResolvedServer) -> DirectTransport | None:
        return self.direct.get(str(getattr(server.config, "transport", DEFAULT_TRANSPORT)))

    def transport_for(self, server: ResolvedServer) -> Transport:
        if server.remote_client is not None:
            if self.remote is None:
                raise _unavailable("delivery through remote clients is not available here")
            return self.remote
        transport = self._direct_for(server)
        if transport is None:
            raise _unavailable(
                f"transport {server.config.transport!r} is not available in this installation"
            )
        return transport

    async def open(self, server: ResolvedServer, tokens: TokenProvider | None) -> DeliverySession:
        return await self.transport_for(server).open(server, tokens)

    def probe(
        self,
        server: ResolvedServer,
        tokens: TokenProvider | None,
        on_step: Callable[[Step], None],
    ) -> Probe:
        """The server test over the configuration's own transport (a remote agent runs its
        own test: ``adapters/remote/jobs.remote_test``)."""
        transport = self._direct_for(server)
        if transport is None:
            raise ValueError(f"no transport {server.config.transport!r} in this installation")
        return transport.probe(server, tokens, on_step)


def _unavailable(text: str) -> SessionFailed:
    # Temporary: a process that can deliver it (an API process with the agent) may take it.
    return SessionFailed(AttemptResult(Outcome.TEMPORARY, None, text, 0, step="connect"))
