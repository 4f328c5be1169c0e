"""E-mail server configurations of a tenant (README "Five-minute walk-through"; the OpenAPI
document at /openapi.json lists every field)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, status

from mailgate.adapters.db.tables import EmailServer
from mailgate.bootstrap import Container
from mailgate.domain.access import Perm
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
    tenant: str, body: EmailServerIn, caller: Caller, db: DB, c: AppContainer
) -> EmailServerOut:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    return _out(c, c.servers.create(db, t, body))


@router.get("/{name}")
def get_server(tenant: str, name: str, caller: Caller, db: DB, c: AppContainer) -> EmailServerOut:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_READ)
    return _out(c, c.servers.get(db, t.id, name))


@router.put("/{name}")
def replace_server(
    tenant: str, name: str, body: EmailServerIn, caller: Caller, db: DB, c: AppContainer
) -> EmailServerOut:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    if "name" not in body.model_fields_set:
        body.name = name  # a PUT without a name keeps it (renaming is explicit)
    return _out(c, c.servers.replace(db, c.servers.get(db, t.id, name), body))


@router.patch("/{name}")
def patch_server(
    tenant: str,
    name: str,
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
    return _out(c, c.servers.patch(db, c.servers.get(db, t.id, name), body))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_server(tenant: str, name: str, caller: Caller, db: DB, c: AppContainer) -> None:
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    c.servers.delete(db, c.servers.get(db, t.id, name))


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
