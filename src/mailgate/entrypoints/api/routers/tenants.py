"""Tenants (system administrators manage them; members can read their own)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import Field

from mailgate.domain.access import Perm
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, require_system_admin
from mailgate.schemas.common import SingleLine, StrictModel, TenantName
from mailgate.services import tenants as svc

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"])


class TenantIn(StrictModel):
    name: TenantName
    display_name: SingleLine | None = Field(default=None, max_length=200)


class TenantPatch(StrictModel):
    display_name: SingleLine = Field(min_length=1, max_length=200)


@router.get("")
def list_tenants(caller: Caller, db: DB) -> dict[str, Any]:
    return {"items": [svc.tenant_view(t) for t in svc.list_tenants(db, caller)]}


@router.post("", status_code=status.HTTP_201_CREATED)
def create_tenant(body: TenantIn, caller: Caller, db: DB, c: AppContainer) -> dict[str, Any]:
    require_system_admin(caller)
    return svc.tenant_view(svc.create_tenant(db, c.clock, body.name, body.display_name))


@router.get("/{tenant}")
def get_tenant(tenant: str, caller: Caller, db: DB) -> dict[str, Any]:
    return svc.tenant_view(svc.tenant_for(db, caller, tenant, Perm.TENANT_READ))


@router.patch("/{tenant}")
def patch_tenant(
    tenant: str, body: TenantPatch, caller: Caller, db: DB, c: AppContainer
) -> dict[str, Any]:
    row = svc.tenant_for(db, caller, tenant, Perm.TENANT_READ)
    require_system_admin(caller)
    row.display_name = body.display_name
    row.updated_at = c.clock()
    return svc.tenant_view(row)


@router.delete("/{tenant}", status_code=status.HTTP_204_NO_CONTENT)
def delete_tenant(tenant: str, caller: Caller, db: DB) -> None:
    row = svc.tenant_for(db, caller, tenant, Perm.TENANT_READ)
    require_system_admin(caller)
    db.delete(row)
