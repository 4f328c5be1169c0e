"""Tenants, and the one place that decides whether a caller may touch a tenant."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import Tenant
from mailgate.domain.access import Perm, Principal
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import Conflict, Forbidden, NotFound

HOME_TENANT = "home"


def tenant_for(db: Session, principal: Principal, name: str, perm: Perm) -> Tenant:
    """The tenant ``name`` if ``principal`` may ``perm`` there.

    A tenant the caller has no role in answers 404, exactly as if it did not exist, so that
    tenant names cannot be probed. A role without the permission answers 403.
    """
    tenant = db.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None or principal.role_in(tenant.id) is None:
        raise NotFound(f"tenant {name!r} not found")
    if not principal.can(tenant.id, perm):
        raise Forbidden(f"your role in tenant {name!r} does not allow this ({perm.value})")
    return tenant


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
