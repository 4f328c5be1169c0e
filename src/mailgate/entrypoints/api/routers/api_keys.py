"""API keys of a tenant, for workflows. The token is shown once and stored as a hash."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from pydantic import Field
from sqlalchemy import select

from mailgate.adapters.db.tables import ApiKey
from mailgate.domain.access import Perm, Role
from mailgate.domain.errors import NotFound
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller
from mailgate.schemas.common import SingleLine, StrictModel
from mailgate.schemas.out.identity import ApiKeyList, ApiKeyOut, NewApiKeyOut
from mailgate.services.tenants import tenant_for

router = APIRouter(prefix="/api/v1/tenants/{tenant}/api-keys", tags=["api-keys"])


class ApiKeyIn(StrictModel):
    name: SingleLine = Field(min_length=1, max_length=100)
    role: Role = Role.WEB_SERVICE


@router.get("")
def list_keys(tenant: str, caller: Caller, db: DB, c: AppContainer) -> ApiKeyList:
    t = tenant_for(db, caller, tenant, Perm.KEYS_MANAGE)
    keys = db.scalars(select(ApiKey).where(ApiKey.tenant_id == t.id).order_by(ApiKey.created_at))
    return ApiKeyList(items=[ApiKeyOut.model_validate(c.identity.api_key_view(k)) for k in keys])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_key(
    tenant: str, body: ApiKeyIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> NewApiKeyOut:
    t = tenant_for(db, caller, tenant, Perm.KEYS_MANAGE)
    key, token = c.identity.create_api_key(db, t, body.name, body.role, caller.name)
    audit(
        request,
        db,
        c,
        "api_key.create",
        tenant_id=t.id,
        detail={"id": key.id, "name": key.name, "role": key.role},
    )
    return NewApiKeyOut.model_validate({**c.identity.api_key_view(key), "token": token})


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(
    tenant: str, key_id: str, request: Request, caller: Caller, db: DB, c: AppContainer
) -> None:
    t = tenant_for(db, caller, tenant, Perm.KEYS_MANAGE)
    key = db.scalar(select(ApiKey).where(ApiKey.tenant_id == t.id, ApiKey.id == key_id))
    if key is None:
        raise NotFound("API key not found")
    audit(
        request,
        db,
        c,
        "api_key.revoke",
        tenant_id=t.id,
        detail={"id": key.id, "name": key.name, "role": key.role},
    )
    db.delete(key)
