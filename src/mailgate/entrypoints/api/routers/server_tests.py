"""Test and diagnose: ``POST .../email-servers/{name}/test`` and the system server's twin,
plus the system e-mail server itself (``GET|PUT|DELETE /api/v1/system/email-server``).

The test endpoints are ``async``: the SMTP dialogue runs on the event loop, and the database
work (short, synchronous) runs in the thread pool, finished before the first byte goes out,
so no transaction stays open while a slow server is waited for.

A client that sends ``Accept: application/x-ndjson`` gets the same result as a stream: one
line ``{"event": "step", "step": {...}}`` as each step completes (a slow TLS handshake or
login shows where it is), then ``{"event": "result", "result": {...}}``. Authorization and
validation errors come before the stream, as ordinary problem documents.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import Field, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mailgate.adapters.db.tables import EmailServer
from mailgate.adapters.remote.jobs import remote_test
from mailgate.bootstrap import Container
from mailgate.domain.access import Perm, Principal
from mailgate.domain.errors import NotFound, ValidationFailed
from mailgate.domain.transport import Step
from mailgate.entrypoints.api.audit_trail import audit, server_changes, server_snapshot
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, require_system_admin
from mailgate.schemas.common import EmailAddress, StrictModel
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer
from mailgate.schemas.out.email_server import DiagnosisOut, EmailServerOut, StepOut
from mailgate.services.diagnosis.message import sender_of
from mailgate.services.diagnosis.run import run_test, token_provider
from mailgate.services.diagnosis.target import resolve_for_test
from mailgate.services.tenants import tenant_for

log = logging.getLogger("mailgate.api")
router = APIRouter(tags=["email-servers"])
SYSTEM = "/api/v1/system/email-server"


class TestRequest(StrictModel):
    """Body of a test: where to send, how far to go, and optionally an unsaved config."""

    to: EmailAddress | None = Field(
        default=None, description="Recipient; default: the config's from_address"
    )
    mode: Literal["send", "dry_run"] = "send"
    config: dict[str, Any] | None = Field(
        default=None, description="An unsaved configuration to test instead of the stored one"
    )


NDJSON = "application/x-ndjson"
# With "Accept: application/x-ndjson" the same result comes as a stream of JSON lines.
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {NDJSON: {"schema": {"type": "string"}}},
        "description": 'The result; or, asked for NDJSON, one line {"event": "step", ...} per '
        'step, then {"event": "result", "result": ...}',
    }
}


def _recipient(server: ResolvedServer, body: TestRequest) -> str:
    to = body.to or sender_of(server.config)[0]
    if to is None:
        raise ValidationFailed.one("to", "required (the configuration has no from_address)")
    return to


async def _diagnose(
    c: Container,
    server: ResolvedServer,
    body: TestRequest,
    label: str,
    on_step: Callable[[Step], None] | None = None,
) -> DiagnosisOut:
    result = await _run(c, server, body, label, on_step)
    if body.config is None and server.id:
        # The stored configuration was tested: keep the outcome for the UI's status badge.
        await run_in_threadpool(_record, c, server.id, body.mode, result)
    return result


def _record(c: Container, server_id: int, mode: str, result: DiagnosisOut) -> None:
    try:
        with c.session() as db:
            steps = [s.model_dump() for s in result.steps]
            c.servers.record_test(db, server_id, ok=result.ok, mode=mode, steps=steps)
    except Exception as exc:  # the test's answer matters more than its record
        log.warning("the test result of server id %s was not recorded: %s", server_id, exc)


async def _run(
    c: Container,
    server: ResolvedServer,
    body: TestRequest,
    label: str,
    on_step: Callable[[Step], None] | None = None,
) -> DiagnosisOut:
    to = _recipient(server, body)
    client = server.remote_client
    if client is not None:
        # remote_output: only the tenant's agent can reach this server; it runs the test.
        report = await remote_test(
            c.hub,
            server,
            to=to,
            mode=body.mode,
            tokens=token_provider(c.token_provider_for, server),
            timeout_s=c.settings.remote_job_timeout_s,
        )
        return _agent_result(report, body, client)
    result = await run_test(
        server,
        prober=c.prober,
        to=to,
        mode=body.mode,
        label=label,
        clock=c.clock,
        token_provider=token_provider(c.token_provider_for, server),
        on_step=on_step,
    )
    return DiagnosisOut.model_validate(result.as_dict())


def _agent_result(report: dict[str, Any], body: TestRequest, client: str) -> DiagnosisOut:
    """The agent's report, or a failed step when it is not a result this version can read
    (an agent of another version): a 200 like every other failed test, not a 500."""
    try:
        return DiagnosisOut.model_validate(report)
    except ValidationError as exc:
        log.warning("remote client %s sent an unreadable test result: %s", client, exc)
    detail = f"the remote client {client!r} sent a test result this version cannot read"
    return DiagnosisOut(
        ok=False,
        mode=body.mode,
        steps=[StepOut(step="connect", ok=False, ms=0, detail=detail)],
        transcript=[],
        hint="Run the same mailgate version for the agent as for the server.",
        warnings=[],
        ms=0,
        message_id=None,
        remote_client=client,
    )


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


async def _stream(
    c: Container, server: ResolvedServer, body: TestRequest, label: str
) -> AsyncIterator[bytes]:
    steps: asyncio.Queue[Step] = asyncio.Queue()
    task = asyncio.create_task(_diagnose(c, server, body, label, on_step=steps.put_nowait))
    try:
        while not task.done() or not steps.empty():
            waiter = asyncio.ensure_future(steps.get())
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                yield _line({"event": "step", "step": waiter.result().as_dict()})
            else:
                waiter.cancel()
        try:
            result = task.result()
        except Exception as exc:  # the diagnosis never raises for SMTP trouble; be safe anyway
            log.error("server test failed unexpectedly: %s", type(exc).__name__)
            yield _line({"event": "error", "detail": "an unexpected error occurred"})
            return
        yield _line({"event": "result", "result": result.model_dump(mode="json")})
    finally:
        task.cancel()  # the client went away: stop talking to the SMTP server


async def _answer(
    request: Request, c: Container, server: ResolvedServer, body: TestRequest, label: str
) -> Any:
    if NDJSON in request.headers.get("accept", ""):
        _recipient(server, body)  # a missing recipient is a 422 before the stream starts
        return StreamingResponse(_stream(c, server, body, label), media_type=NDJSON)
    return await _diagnose(c, server, body, label)


def _load_tenant_server(
    c: Container, db: Session, caller: Principal, tenant: str, name: str, body: TestRequest
) -> ResolvedServer:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_TEST)
    stored: ResolvedServer | None
    try:
        stored = c.servers.resolve(c.servers.get(db, t.id, name))
    except NotFound:
        if body.config is None:
            raise
        stored = None  # testing a new configuration before its first save
    server = resolve_for_test(c.servers, stored, body.config, system=False)
    if stored is None:
        server = ResolvedServer(0, t.id, server.name, server.config, server.secrets)
    db.commit()  # end the transaction before the (possibly slow) SMTP dialogue
    return server


@router.post(
    "/api/v1/tenants/{tenant}/email-servers/{name}/test",
    response_model=DiagnosisOut,
    responses=_STREAM,
)
async def test_server(
    tenant: str,
    name: str,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
    body: TestRequest | None = None,
) -> Any:
    """Run the step-by-step diagnosis; every SMTP failure is a step result, never a 5xx."""
    test = body or TestRequest()
    server = await run_in_threadpool(_load_tenant_server, c, db, caller, tenant, name, test)
    return await _answer(request, c, server, test, f"{tenant}/{server.name}")


# ---- the system e-mail server (system_admin only) ---------------------------------------------


@router.get(SYSTEM, tags=["system"])
def get_system_server(caller: Caller, db: DB, c: AppContainer) -> EmailServerOut:
    require_system_admin(caller)
    return _server_out(c, c.servers.get(db, None, "SYSTEM"))


@router.put(
    SYSTEM,
    responses={201: {"model": EmailServerOut, "description": "Created (there was none)"}},
    tags=["system"],
)
def put_system_server(
    body: EmailServerIn,
    request: Request,
    response: Response,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> EmailServerOut:
    """Create or fully replace the system e-mail server (omitted secrets are kept)."""
    require_system_admin(caller)
    rows = c.servers.list(db, None)
    before = server_snapshot(c, rows[0] if rows else None)
    if rows:
        row = c.servers.replace(db, rows[0], body)
    else:
        response.status_code = status.HTTP_201_CREATED
        row = c.servers.create(db, None, body)
    changes = server_changes(before, server_snapshot(c, row), body.model_dump(mode="json"))
    if changes:
        detail = {"server": row.name, "changes": changes}
        audit(request, db, c, "system.email_server.update", tenant_id=None, detail=detail)
    return _server_out(c, row)


def _server_out(c: Container, row: EmailServer) -> EmailServerOut:
    return EmailServerOut.model_validate(c.servers.view(row))


@router.delete(SYSTEM, status_code=status.HTTP_204_NO_CONTENT, tags=["system"])
def delete_system_server(request: Request, caller: Caller, db: DB, c: AppContainer) -> None:
    require_system_admin(caller)
    c.servers.delete(db, c.servers.get(db, None, "SYSTEM"))
    audit(request, db, c, "system.email_server.delete", tenant_id=None, detail={"server": "SYSTEM"})


def _load_system_server(
    c: Container, db: Session, caller: Principal, body: TestRequest
) -> ResolvedServer:
    require_system_admin(caller)
    rows = c.servers.list(db, None)
    stored = c.servers.resolve(rows[0]) if rows else None
    if stored is None and body.config is None:
        raise NotFound("system e-mail server not found")
    server = resolve_for_test(c.servers, stored, body.config, system=True)
    db.commit()
    return server


@router.post(SYSTEM + "/test", response_model=DiagnosisOut, responses=_STREAM, tags=["system"])
async def test_system_server(
    request: Request, caller: Caller, db: DB, c: AppContainer, body: TestRequest | None = None
) -> Any:
    test = body or TestRequest()
    server = await run_in_threadpool(_load_system_server, c, db, caller, test)
    return await _answer(request, c, server, test, "system e-mail server")
