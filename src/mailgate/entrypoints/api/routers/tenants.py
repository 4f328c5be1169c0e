"""Tenants (system administrators manage them; members can read their own)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from pydantic import Field

from mailgate.adapters.db.tables import Tenant
from mailgate.domain.access import Perm
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, require_system_admin
from mailgate.schemas.common import SingleLine, StrictModel, TenantName
from mailgate.schemas.out.identity import TenantList, TenantOut
from mailgate.services import tenants as svc

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])


class TenantIn(StrictModel):
    name: TenantName
    display_name: SingleLine | None = Field(default=None, max_length=200)


class TenantPatch(StrictModel):
    display_name: SingleLine = Field(min_length=1, max_length=200)


@router.get("")
def list_tenants(caller: Caller, db: DB) -> TenantList:
    return TenantList(items=[_out(t) for t in svc.list_tenants(db, caller)])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_tenant(
    body: TenantIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> TenantOut:
    require_system_admin(caller)
    row = svc.create_tenant(db, c.clock, body.name, body.display_name)
    db.flush()
    detail = {"name": row.name, "display_name": row.display_name}
    audit(request, db, c, "tenant.create", tenant_id=row.id, detail=detail)
    return _out(row)


@router.get("/{tenant}")
def get_tenant(tenant: str, caller: Caller, db: DB) -> TenantOut:
    return _out(svc.tenant_for(db, caller, tenant, Perm.TENANT_READ))


@router.patch("/{tenant}")
def patch_tenant(
    tenant: str, body: TenantPatch, request: Request, caller: Caller, db: DB, c: AppContainer
) -> TenantOut:
    row = svc.tenant_for(db, caller, tenant, Perm.TENANT_READ)
    require_system_admin(caller)
    if body.display_name != row.display_name:
        changes = {"display_name": [row.display_name, body.display_name]}
        audit(request, db, c, "tenant.update", tenant_id=row.id, detail={"changes": changes})
    row.display_name = body.display_name
    row.updated_at = c.clock()
    return _out(row)


@router.delete("/{tenant}", status_code=status.HTTP_204_NO_CONTENT)
def delete_tenant(tenant: str, request: Request, caller: Caller, db: DB, c: AppContainer) -> None:
    row = svc.tenant_for(db, caller, tenant, Perm.TENANT_READ)
    require_system_admin(caller)
    # The tenant's own entries go with it; this one is the installation's.
    audit(request, db, c, "tenant.delete", tenant_id=None, detail={"name": row.name})
    db.delete(row)


def _out(row: Tenant) -> TenantOut:
    return TenantOut.model_validate(svc.tenant_view(row))
