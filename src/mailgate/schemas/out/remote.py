"""Remote clients (the agents that deliver from inside a customer's network) as the API
shows them."""

from __future__ import annotations

from pydantic import Field

from mailgate.schemas.out.base import OutModel, Timestamp


class RemoteClientOut(OutModel):
    name: str
    connected: bool
    last_seen_at: Timestamp | None
    agent_version: str | None
    agent_address: str | None
    created_at: Timestamp


class RemoteClientList(OutModel):
    items: list[RemoteClientOut]


class NewRemoteClientOut(RemoteClientOut):
    token: str = Field(description="the agent's token: shown only in this answer")
