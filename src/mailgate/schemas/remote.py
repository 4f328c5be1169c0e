"""The remote client protocol: JSON text frames over one WebSocket, version 1.

The agent opens ``wss://<mailgate>/api/v1/remote/connect`` with ``Authorization: Bearer
mgr_...``. A refused connection gets an HTTP answer instead of the upgrade: ``401`` for an
unknown or deleted token (the agent stops), ``403`` while the installation does not allow
remote clients (the agent keeps retrying). Then::

    agent  -> server  hello        {v, agent_version, hostname, max_frame_bytes}
    server -> agent   welcome      {v, tenant, client, heartbeat_s, max_message_bytes}
    agent  -> server  heartbeat    every heartbeat_s; silence for 3 x heartbeat_s ends it
    server -> agent   deliver      {id, message_id, server, mail_from, rcpt_to, raw_b64}
    agent  -> server  result       {id, result}        the transport's outcome, one per deliver
    server -> agent   test         {id, server, to, mode}
    agent  -> server  test_result  {id, result}        the step-by-step diagnosis
    either way        error        {id?, detail}
    server closes     4401 token deleted, 4403 remote clients switched off,
                      4408 heartbeat missed, 4409 replaced by a newer connection

``server`` carries exactly what one delivery needs: the public configuration and the secrets
for it (a password, a client key, an OAuth2 *access* token). Refresh tokens and client secrets
never leave mailgate. Every frame carries ``type``; unknown types are answered with ``error``
so that either side can be newer than the other.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
CLOSE_TOKEN_REVOKED = 4401
CLOSE_NOT_ALLOWED = 4403
CLOSE_HEARTBEAT_MISSED = 4408
CLOSE_REPLACED = 4409


class Frame(BaseModel):
    # Extra fields are ignored: a newer peer may add fields without breaking an older one.
    model_config = ConfigDict(extra="ignore")


class Hello(Frame):
    type: Literal["hello"] = "hello"
    v: int = PROTOCOL_VERSION
    agent_version: str = Field(default="unknown", max_length=64)
    hostname: str | None = Field(default=None, max_length=255)
    max_frame_bytes: int | None = Field(default=None, ge=1024)
    """The largest frame the agent accepts; bigger messages are not handed to it."""


class Welcome(Frame):
    type: Literal["welcome"] = "welcome"
    v: int = PROTOCOL_VERSION
    tenant: str
    client: str
    heartbeat_s: float
    max_message_bytes: int


class Heartbeat(Frame):
    type: Literal["heartbeat"] = "heartbeat"


class ServerSpec(Frame):
    """One configuration as the agent needs it for one job."""

    config: dict[str, Any]
    """The public configuration (``EmailServerIn`` without secrets, with ``name``)."""
    password: str | None = None
    client_key_pem: str | None = None
    access_token: str | None = None
    """OAuth2 only: a current access token; the agent never refreshes."""


class Deliver(Frame):
    type: Literal["deliver"] = "deliver"
    id: str
    message_id: str | None = None
    """The Message-ID header, for the agent's log."""
    server: ServerSpec
    mail_from: str
    rcpt_to: list[str]
    raw_b64: str


class Result(Frame):
    type: Literal["result"] = "result"
    id: str
    result: dict[str, Any]


class ServerTest(Frame):
    type: Literal["test"] = "test"
    id: str
    server: ServerSpec
    to: str
    mode: Literal["send", "dry_run"] = "send"


class ServerTestResult(Frame):
    type: Literal["test_result"] = "test_result"
    id: str
    result: dict[str, Any]


class Error(Frame):
    type: Literal["error"] = "error"
    id: str | None = None
    detail: str = Field(max_length=2000)
