"""The audit trail (README "Audit log"): a tenant's, for its administrators, and the whole
installation's, for system administrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from mailgate.domain.access import Perm
from mailgate.entrypoints.api.deps import DB, Caller, require_system_admin
from mailgate.schemas.out.system import AuditPage
from mailgate.services import audit as trail
from mailgate.services.tenants import tenant_for

router = APIRouter(tags=["audit"])

Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]
Action = Annotated[
    str | None,
    Query(max_length=64, description="e.g. email_server.update, or a prefix: email_server.*"),
]
Actor = Annotated[str | None, Query(max_length=100, description="a user name or apikey:<name>")]
Since = Annotated[AwareDatetime | None, Query(description="entries at or after this time")]


@router.get("/api/v1/tenants/{tenant}/audit")
def list_audit(
    tenant: str,
    caller: Caller,
    db: DB,
    limit: Limit = 50,
    cursor: Cursor = None,
    action: Action = None,
    actor: Actor = None,
    since: Since = None,
) -> AuditPage:
    """The tenant's entries, newest first, cursor pagination."""
    t = tenant_for(db, caller, tenant, Perm.AUDIT_READ)
    return AuditPage.model_validate(
        trail.page(
            db,
            tenant_id=t.id,
            all_tenants=False,
            action=action,
            actor=actor,
            since=since,
            limit=limit,
            cursor=cursor,
        )
    )


@router.get("/api/v1/audit")
def list_all_audit(
    caller: Caller,
    db: DB,
    limit: Limit = 50,
    cursor: Cursor = None,
    action: Action = None,
    actor: Actor = None,
    since: Since = None,
) -> AuditPage:
    """Every entry of the installation (tenants' and its own: users, system settings,
    sign-ins), newest first (system_admin)."""
    require_system_admin(caller)
    return AuditPage.model_validate(
        trail.page(
            db,
            tenant_id=None,
            all_tenants=True,
            action=action,
            actor=actor,
            since=since,
            limit=limit,
            cursor=cursor,
        )
    )
