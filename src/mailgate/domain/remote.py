"""Remote clients: who is on the other end of an agent's WebSocket. Pure values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentIdentity:
    """One remote client of one tenant, as authenticated by its token."""

    client_id: int
    tenant_id: int
    tenant_name: str
    name: str
