"""Users and their per-tenant roles (system administrators only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import User
from mailgate.bootstrap import Container
from mailgate.domain.access import Role
from mailgate.domain.errors import Conflict
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, require_system_admin
from mailgate.schemas.common import EmailAddress, StrictModel, TenantName
from mailgate.schemas.out.identity import UserList, UserOut
from mailgate.services.audit import CHANGED, field_diff

router = APIRouter(prefix="/api/v1/users", tags=["users"])

Username = str


class UserIn(StrictModel):
    username: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    email: EmailAddress | None = None
    password: str = Field(min_length=1, max_length=1024)
    roles: dict[TenantName, Role] = Field(default_factory=dict)
    system_admin: bool = False


class UserPatch(StrictModel):
    email: EmailAddress | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    roles: dict[TenantName, Role] | None = None
    system_admin: bool | None = None


@router.get("")
def list_users(caller: Caller, db: DB, c: AppContainer) -> UserList:
    require_system_admin(caller)
    users = db.scalars(select(User).order_by(User.username))
    return UserList(items=[_out(c, db, u) for u in users])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_user(body: UserIn, request: Request, caller: Caller, db: DB, c: AppContainer) -> UserOut:
    require_system_admin(caller)
    password_hash = c.identity.hash_new_password(db, body.password)  # outside a transaction
    user = c.identity.create_user(
        db,
        password_hash=password_hash,
        username=body.username,
        password=body.password,
        email=body.email,
        roles={k: v.value for k, v in body.roles.items()},
        system_admin=body.system_admin,
    )
    out = _out(c, db, user)
    audit(
        request,
        db,
        c,
        "user.create",
        tenant_id=None,
        detail={
            "username": user.username,
            "changes": field_diff({}, _audited(out), secrets=()),
            "password": "set",
        },
    )
    return out


@router.get("/{username}")
def get_user(username: str, caller: Caller, db: DB, c: AppContainer) -> UserOut:
    require_system_admin(caller)
    return _out(c, db, c.identity.get_user(db, username))


@router.patch("/{username}")
def patch_user(
    username: str, body: UserPatch, request: Request, caller: Caller, db: DB, c: AppContainer
) -> UserOut:
    require_system_admin(caller)
    password_hash = None
    if body.password is not None:  # hashed outside a transaction
        password_hash = c.identity.hash_new_password(db, body.password)
    user = c.identity.get_user(db, username)
    before = _audited(_out(c, db, user))
    fields = body.model_fields_set
    if "system_admin" in fields and body.system_admin is False and user.system_admin:
        _keep_one_admin(db, user)
    if body.roles is not None:
        c.identity.set_roles(db, user, {k: v.value for k, v in body.roles.items()})
    if "email" in fields:
        user.email = body.email
    if body.password is not None:
        c.identity.set_password(db, user, body.password, password_hash=password_hash)
    if body.system_admin is not None:
        user.system_admin = body.system_admin
    user.updated_at = c.clock()
    out = _out(c, db, user)
    changes = field_diff(before, _audited(out))
    if body.password is not None:
        changes["password"] = CHANGED
    audit(
        request,
        db,
        c,
        "user.update",
        tenant_id=None,
        detail={"username": user.username, "changes": changes},
    )
    return out


@router.delete("/{username}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(username: str, request: Request, caller: Caller, db: DB, c: AppContainer) -> None:
    require_system_admin(caller)
    user = c.identity.get_user(db, username)
    if user.system_admin:
        _keep_one_admin(db, user)
    audit(
        request,
        db,
        c,
        "user.delete",
        tenant_id=None,
        detail={"username": user.username, "was": _audited(_out(c, db, user))},
    )
    db.delete(user)


def _audited(out: UserOut) -> dict[str, Any]:
    """What the audit trail compares of a user: e-mail, roles, system_admin."""
    view = out.model_dump(mode="json")
    return {k: view.get(k) for k in ("email", "roles", "system_admin")}


def _out(c: Container, db: Session, user: User) -> UserOut:
    return UserOut.model_validate(c.identity.user_view(db, user))


def _keep_one_admin(db: Any, user: User) -> None:
    admins = db.scalar(select(func.count()).select_from(User).where(User.system_admin.is_(True)))
    if admins <= 1:
        raise Conflict(f"{user.username!r} is the last system administrator")
