"""E-mail server configurations of a tenant (README "Five-minute walk-through"; the OpenAPI
document at /openapi.json lists every field)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, status

from mailgate.adapters.db.tables import EmailServer
from mailgate.bootstrap import Container
from mailgate.domain.access import Perm
from mailgate.entrypoints.api.audit_trail import audit, server_changes, server_snapshot
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller
from mailgate.schemas.email_server import EmailServerIn
from mailgate.schemas.out.email_server import EmailServerList, EmailServerOut
from mailgate.services.tenants import tenant_for

router = APIRouter(prefix="/api/v1/tenants/{tenant}/email-servers", tags=["email-servers"])


@router.get("")
def list_servers(tenant: str, caller: Caller, db: DB, c: AppContainer) -> EmailServerList:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_READ)
    rows = c.servers.list(db, t.id)
    return EmailServerList(items=[EmailServerOut.model_validate(c.servers.view(r)) for r in rows])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_server(
    tenant: str, body: EmailServerIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> EmailServerOut:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    row = c.servers.create(db, t, body)
    after = server_snapshot(c, row)
    changes = server_changes({}, after, body.model_dump(mode="json", by_alias=True))
    audit(
        request,
        db,
        c,
        "email_server.create",
        tenant_id=t.id,
        detail={"server": row.name, "changes": changes},
    )
    return _out(c, row)


@router.get("/{name}")
def get_server(tenant: str, name: str, caller: Caller, db: DB, c: AppContainer) -> EmailServerOut:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_READ)
    return _out(c, c.servers.get(db, t.id, name))


@router.put("/{name}")
def replace_server(
    tenant: str,
    name: str,
    body: EmailServerIn,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> EmailServerOut:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    if "name" not in body.model_fields_set:
        body.name = name  # a PUT without a name keeps it (renaming is explicit)
    row = c.servers.get(db, t.id, name)
    before = server_snapshot(c, row)
    row = c.servers.replace(db, row, body)
    _audit_update(request, db, c, t.id, name, before, row, body.model_dump(mode="json"))
    return _out(c, row)


@router.patch("/{name}")
def patch_server(
    tenant: str,
    name: str,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
    body: dict[str, Any] = Body(
        ...,
        description="JSON merge patch (RFC 7396) of the configuration",
        media_type="application/json",
    ),
) -> EmailServerOut:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    row = c.servers.get(db, t.id, name)
    before = server_snapshot(c, row)
    row = c.servers.patch(db, row, body)
    _audit_update(request, db, c, t.id, name, before, row, body)
    return _out(c, row)


def _audit_update(
    request: Request,
    db: DB,
    c: Container,
    tenant_id: int | None,
    name: str,
    before: dict[str, Any],
    row: EmailServer,
    body: dict[str, Any],
) -> None:
    changes = server_changes(before, server_snapshot(c, row), body)
    if changes:
        audit(
            request,
            db,
            c,
            "email_server.update",
            tenant_id=tenant_id,
            detail={"server": name, "changes": changes},
        )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_server(
    tenant: str, name: str, request: Request, caller: Caller, db: DB, c: AppContainer
) -> None:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    row = c.servers.get(db, t.id, name)
    was = server_snapshot(c, row)
    c.servers.delete(db, row)
    audit(
        request,
        db,
        c,
        "email_server.delete",
        tenant_id=t.id,
        detail={"server": name, "changes": server_changes(was, {}, None)},
    )


@router.post("/{name}/resume")
def resume_server(
    tenant: str, name: str, caller: Caller, db: DB, c: AppContainer
) -> EmailServerOut:
    """End a pause the provider's quota or throttling answer began, now: the waiting mail is
    due at once (README "Provider limits, pauses and fairness"). Not paused: nothing changes."""
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    row = c.servers.get(db, t.id, name)
    c.servers.resume(db, row)
    return _out(c, row)


def _out(c: Container, row: EmailServer) -> EmailServerOut:
    return EmailServerOut.model_validate(c.servers.view(row))
