"""Tenants, and the one place that decides whether a caller may touch a tenant."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import Tenant
from mailgate.domain.access import Perm, Principal
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import Conflict, Forbidden, NotFound

HOME_TENANT = "home"
_TENANT_ID = select(Tenant.id).where(Tenant.name == bindparam("name"))


def tenant_for(db: Session, principal: Principal, name: str, perm: Perm) -> Tenant:
    """The tenant ``name`` if ``principal`` may ``perm`` there.

    A tenant the caller has no role in answers 404, exactly as if it did not exist, so that
    tenant names cannot be probed. A role without the permission answers 403.
    """
    tenant = db.scalar(select(Tenant).where(Tenant.name == name))
    check_access(principal, name, tenant.id if tenant is not None else None, perm)
    assert tenant is not None
    return tenant


def check_access(principal: Principal, name: str, tenant_id: int | None, perm: Perm) -> None:
    """404 for a tenant the caller has no role in (as if it did not exist), 403 for a role
    without ``perm``."""
    if tenant_id is None or principal.role_in(tenant_id) is None:
        raise NotFound(f"tenant {name!r} not found")
    if not principal.can(tenant_id, perm):
        raise Forbidden(f"your role in tenant {name!r} does not allow this ({perm.value})")


def tenant_id_for(conn: Connection, principal: Principal, name: str, perm: Perm) -> int:
    """``tenant_for`` as one column query, for the submission hot path."""
    tenant_id: int | None = conn.execute(_TENANT_ID, {"name": name}).scalar()
    check_access(principal, name, tenant_id, perm)
    assert tenant_id is not None
    return tenant_id


def create_tenant(db: Session, clock: Clock, name: str, display_name: str | None) -> Tenant:
    if db.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"tenant {name!r} exists already")
    now = clock()
    tenant = Tenant(name=name, display_name=display_name or name, created_at=now, updated_at=now)
    db.add(tenant)
    db.flush()
    return tenant


def list_tenants(db: Session, principal: Principal) -> list[Tenant]:
    query = select(Tenant).order_by(Tenant.name)
    if not principal.system_admin:
        query = query.where(Tenant.id.in_(list(principal.roles)))
    return list(db.scalars(query))


def tenant_view(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "display_name": tenant.display_name,
        "created_at": isoformat(tenant.created_at),
        "updated_at": isoformat(tenant.updated_at),
    }
