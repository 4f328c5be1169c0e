"""Remote clients of a tenant (README "Remote output") and the agents' WebSocket.

The REST part manages clients; ``/api/v1/remote/connect`` is where agents connect out to.
The frames are described in ``mailgate.schemas.remote``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, Request, WebSocket, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from mailgate.adapters.remote.hub import AgentConnection
from mailgate.bootstrap import Container
from mailgate.domain.access import Perm
from mailgate.domain.errors import Unauthenticated
from mailgate.domain.remote import AgentIdentity
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller
from mailgate.entrypoints.api.problems import PROBLEM_JSON
from mailgate.schemas.common import ObjectName, StrictModel
from mailgate.schemas.out.remote import NewRemoteClientOut, RemoteClientList, RemoteClientOut
from mailgate.schemas.remote import (
    CLOSE_HEARTBEAT_MISSED,
    CLOSE_NOT_ALLOWED,
    CLOSE_TOKEN_REVOKED,
    Hello,
    Welcome,
)
from mailgate.services.remote_clients import remote_clients_allowed
from mailgate.services.tenants import tenant_for

log = logging.getLogger("mailgate.remote")
router = APIRouter(tags=["remote-clients"])
BASE = "/api/v1/tenants/{tenant}/remote-clients"


class RemoteClientIn(StrictModel):
    name: ObjectName


@router.get(BASE)
def list_clients(tenant: str, caller: Caller, db: DB, c: AppContainer) -> RemoteClientList:
    t = tenant_for(db, caller, tenant, Perm.REMOTE_MANAGE)
    now = c.clock()
    rows = c.remote_clients.list(db, t.id)
    return RemoteClientList(
        items=[RemoteClientOut.model_validate(c.remote_clients.view(row, now)) for row in rows]
    )


@router.post(BASE, status_code=status.HTTP_201_CREATED)
def create_client(
    tenant: str,
    body: RemoteClientIn,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> NewRemoteClientOut:
    t = tenant_for(db, caller, tenant, Perm.REMOTE_MANAGE)
    row, token = c.remote_clients.create(db, t, body.name)
    audit(request, db, c, "remote_client.create", tenant_id=t.id, detail={"name": row.name})
    return NewRemoteClientOut.model_validate({**c.remote_clients.view(row), "token": token})


@router.get(BASE + "/{name}")
def get_client(tenant: str, name: str, caller: Caller, db: DB, c: AppContainer) -> RemoteClientOut:
    t = tenant_for(db, caller, tenant, Perm.REMOTE_MANAGE)
    return RemoteClientOut.model_validate(
        c.remote_clients.view(c.remote_clients.get(db, t.id, name))
    )


@router.delete(BASE + "/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_client(
    tenant: str, name: str, request: Request, caller: Caller, db: DB, c: AppContainer
) -> None:
    t = tenant_for(db, caller, tenant, Perm.REMOTE_MANAGE)
    c.remote_clients.delete(db, c.remote_clients.get(db, t.id, name))
    audit(request, db, c, "remote_client.delete", tenant_id=t.id, detail={"name": name})
    # Commit first: the agent must not be able to reconnect with the token in between.
    db.commit()
    c.hub.call_soon_threadsafe_disconnect(
        t.id, name, CLOSE_TOKEN_REVOKED, "this remote client was deleted"
    )


# ---- the agents' WebSocket -------------------------------------------------------------------


def _denial(status_code: int, title: str, detail: str) -> JSONResponse:
    body = {
        "type": f"urn:mailgate:problem:{'unauthenticated' if status_code == 401 else 'forbidden'}",
        "title": title,
        "status": status_code,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status_code, media_type=PROBLEM_JSON)


async def _refuse(ws: WebSocket, status_code: int, title: str, detail: str) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(_denial(status_code, title, detail))
    else:  # the ASGI server cannot send an HTTP answer: a plain close becomes a 403
        await ws.close(CLOSE_TOKEN_REVOKED if status_code == 401 else CLOSE_NOT_ALLOWED, detail)


def _authenticate(c: Container, token: str) -> tuple[AgentIdentity | None, int, str]:
    with c.session() as db:
        if not remote_clients_allowed(db):
            return None, 403, "remote clients are not allowed on this installation"
        try:
            return c.remote_clients.authenticate(db, token), 200, ""
        except Unauthenticated as exc:
            return None, 401, exc.detail


@router.websocket("/api/v1/remote/connect")
async def remote_connect(ws: WebSocket) -> None:
    c: Container = ws.app.state.container
    header = ws.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        await _refuse(ws, 401, "Unauthenticated", "send 'Authorization: Bearer mgr_...'")
        return
    agent, code, detail = await run_in_threadpool(_authenticate, c, token.strip())
    if agent is None:
        log.warning(
            "refused a remote client from %s: %s", ws.client.host if ws.client else "?", detail
        )
        title = "Unauthenticated" if code == 401 else "Forbidden"
        await _refuse(ws, code, title, detail)
        return
    await ws.accept()
    heartbeat_s = c.settings.remote_heartbeat_s
    try:
        first = await _receive_text(ws, heartbeat_s * 3)
        hello = Hello.model_validate_json(first)
    except (TimeoutError, ValidationError, WebSocketDisconnect, _Malformed, RuntimeError):
        await _close_quietly(ws, 1002, "expected a hello frame")
        return
    address = ws.client.host if ws.client else None
    await run_in_threadpool(_touch, c, agent, heartbeat_s, hello.agent_version, address)
    conn = AgentConnection(
        agent=agent,
        send_json=ws.send_json,
        close=ws.close,
        address=address,
        version=hello.agent_version,
        max_frame_bytes=hello.max_frame_bytes,
    )
    await ws.send_json(
        Welcome(
            tenant=agent.tenant_name,
            client=agent.name,
            heartbeat_s=heartbeat_s,
            max_message_bytes=c.settings.max_message_bytes,
        ).model_dump()
    )
    await c.hub.register(conn)
    woken = await run_in_threadpool(_wake, c, agent)
    if woken:
        log.info(
            "remote client %s/%s is back: %d waiting message(s) are due now",
            agent.tenant_name,
            agent.name,
            woken,
        )
    try:
        await _serve(ws, c, conn, heartbeat_s)
    finally:
        c.hub.unregister(conn)
        if not c.hub.is_connected(agent.tenant_id, agent.name):  # not replaced by a newer one
            await run_in_threadpool(_mark_disconnected, c, agent)


async def _serve(ws: WebSocket, c: Container, conn: AgentConnection, heartbeat_s: float) -> None:
    while not conn.closed:
        try:
            text = await _receive_text(ws, heartbeat_s * 3)
        except TimeoutError:
            log.warning("remote client %s missed its heartbeats; closing", conn.agent.name)
            await _close_quietly(ws, CLOSE_HEARTBEAT_MISSED, "no heartbeat")
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        except _Malformed as exc:
            log.warning("remote client %s: %s; closing", conn.agent.name, exc)
            await _close_quietly(ws, 1003, str(exc))
            return
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            # Not JSON, or nested deeper than a parser goes: not an agent of ours.
            log.warning("remote client %s sent a malformed frame; closing", conn.agent.name)
            await _close_quietly(ws, 1007, "malformed frame")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "heartbeat":
            # Another process may have deleted the client or switched remote clients off.
            valid = await run_in_threadpool(_touch, c, conn.agent, heartbeat_s)
            if not valid:
                await _close_quietly(ws, CLOSE_TOKEN_REVOKED, "no longer allowed")
                return
        elif kind in ("result", "test_result") and isinstance(frame.get("id"), str):
            result = frame.get("result")
            if isinstance(result, dict):
                c.hub.answer(conn, frame["id"], result)
        elif kind == "error":
            job_id = frame.get("id")
            detail = str(frame.get("detail", ""))[:500]
            if isinstance(job_id, str):
                c.hub.answer(conn, job_id, {"error": detail})
            log.warning("remote client %s reported an error: %s", conn.agent.name, detail)
        else:
            await ws.send_json({"type": "error", "detail": f"unexpected frame type {kind!r}"})


def _touch(
    c: Container,
    agent: AgentIdentity,
    heartbeat_s: float,
    version: str | None = None,
    address: str | None = None,
) -> bool:
    with c.session() as db:
        if not c.remote_clients.still_valid(db, agent):
            return False
        c.remote_clients.touch(
            db, agent, alive_for_s=heartbeat_s * 3, version=version, address=address
        )
        return True


def _wake(c: Container, agent: AgentIdentity) -> int:
    with c.session() as db:
        return c.remote_clients.wake_waiting_mail(db, agent)


def _mark_disconnected(c: Container, agent: AgentIdentity) -> None:
    with c.session() as db:
        c.remote_clients.mark_disconnected(db, agent)


class _Malformed(Exception):
    """A frame that is no part of the protocol (binary)."""


async def _receive_text(ws: WebSocket, timeout_s: float) -> str:
    """The next text frame; ``_Malformed`` for a binary one (Starlette's ``receive_text``
    raised a ``KeyError`` for those: a traceback per frame)."""
    message = await asyncio.wait_for(ws.receive(), timeout_s)
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if not isinstance(text, str):
        raise _Malformed("binary frames are not part of the protocol")
    return text


async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # the peer may be gone already
        await ws.close(code, reason)
