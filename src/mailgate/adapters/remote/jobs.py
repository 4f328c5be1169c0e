"""Jobs for remote client agents that need no outbox: which configurations go through an
agent, the OAuth2 access token a job carries, and "Send test e-mail" through the agent.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from mailgate.adapters.remote.codec import server_spec
from mailgate.adapters.remote.hub import AgentUnavailable, RemoteError, RemoteHub
from mailgate.domain.transport import Step
from mailgate.ports import TokenProvider
from mailgate.schemas.email_server import ResolvedServer
from mailgate.schemas.remote import ServerTest


def not_connected(client: str) -> str:
    return str(AgentUnavailable(client))


async def access_token(
    server: ResolvedServer, tokens: TokenProvider | None, force_refresh: bool = False
) -> str | None:
    if server.config.authentication.method != "oauth2" or tokens is None:
        return None
    return await tokens.access_token(force_refresh=force_refresh)


async def remote_test(
    hub: RemoteHub,
    server: ResolvedServer,
    *,
    to: str,
    mode: Literal["send", "dry_run"],
    tokens: TokenProvider | None,
    timeout_s: float,
) -> dict[str, Any]:
    """ "Send test e-mail" through the agent: the same step-by-step result as a direct test.

    Failures to reach the agent are a failed ``connect`` step, never an exception."""
    client = server.remote_client
    assert client is not None and server.tenant_id is not None
    tenant_id = server.tenant_id
    started = time.monotonic()

    def failed(step: str, detail: str, hint: str) -> dict[str, Any]:
        return {
            "ok": False,
            "mode": mode,
            "steps": [Step(step, False, ms_since(started), detail).as_dict()],
            "transcript": [],
            "hint": hint,
            "warnings": [],
            "ms": ms_since(started),
            "message_id": None,
            "remote_client": client,
        }

    try:
        token = await access_token(server, tokens)
    except Exception as exc:
        return failed(
            "auth",
            f"could not get an OAuth2 access token: {type(exc).__name__}",
            "Authorize the configuration again (OAuth2).",
        )
    frame = ServerTest(id="", server=server_spec(server, token), to=to, mode=mode).model_dump()
    try:
        result = await hub.call(lambda: hub.request(tenant_id, client, frame, timeout_s))
    except RemoteError as exc:
        return failed(
            "connect",
            str(exc),
            f"This configuration is delivered by the remote client {client!r}. Start its agent "
            "(mailgate agent --url ... --token ...) inside the network that can reach the SMTP "
            "server, and check that it shows as connected under remote clients.",
        )
    if "error" in result or not isinstance(result.get("steps"), list):
        return failed(
            "connect",
            f"the remote client could not run the test: {str(result.get('error', ''))[:300]}",
            "Check the agent's log.",
        )
    return {**result, "remote_client": client}


def ms_since(since: float) -> int:
    return int((time.monotonic() - since) * 1000)
