"""A tenant's audit log (exports, imports, ...), for its administrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from mailgate.adapters.db.tables import AuditEntry
from mailgate.domain.access import Perm
from mailgate.domain.clock import isoformat
from mailgate.domain.errors import ValidationFailed
from mailgate.entrypoints.api.deps import DB, Caller
from mailgate.schemas.out.system import AuditEntryOut, AuditPage
from mailgate.services.tenants import tenant_for

router = APIRouter(prefix="/api/v1/tenants/{tenant}/audit", tags=["audit"])


@router.get("")
def list_audit(
    tenant: str,
    caller: Caller,
    db: DB,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. tenant.export")] = None,
) -> AuditPage:
    """Newest first, cursor pagination."""
    t = tenant_for(db, caller, tenant, Perm.AUDIT_READ)
    query = select(AuditEntry).where(AuditEntry.tenant_id == t.id)
    if cursor is not None:
        # ASCII digits that fit a 64-bit integer (str.isdigit alone also accepts "²" and "٣").
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise ValidationFailed.one("cursor", "not a cursor from a previous page")
        query = query.where(AuditEntry.id < int(cursor))
    if action:
        query = query.where(AuditEntry.action == action)
    rows = list(db.scalars(query.order_by(AuditEntry.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        items=[
            AuditEntryOut(
                id=row.id,
                at=isoformat(row.at),
                actor=row.actor,
                action=row.action,
                detail=row.detail,
            )
            for row in rows
        ],
        next_cursor=str(rows[-1].id) if more else None,
    )
