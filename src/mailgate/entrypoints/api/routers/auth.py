"""Sign in and out, and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import Field

from mailgate.domain.errors import MailgateError
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import CSRF_COOKIE, DB, SESSION_COOKIE, AppContainer, Caller
from mailgate.schemas.common import SingleLine, StrictModel
from mailgate.schemas.out.identity import (
    LoginOut,
    MeOut,
    SignedInApiKeyOut,
    SignedInUserOut,
    UserOut,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginIn(StrictModel):
    username: SingleLine = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


@router.post("/login")
def login(body: LoginIn, request: Request, response: Response, db: DB, c: AppContainer) -> LoginOut:
    client = request.client.host if request.client else "unknown"
    try:
        token, user, sess = c.identity.login(db, body.username, body.password, client)
    except MailgateError as exc:
        audit(
            request,
            db,
            c,
            "auth.sign_in_failed",
            tenant_id=None,
            actor=body.username[:64],
            detail={"reason": exc.detail},
        )
        db.commit()  # keep the failure count (and the entry) even though the request fails
        raise
    audit(request, db, c, "auth.sign_in", tenant_id=None, actor=user.username)
    secure = c.settings.public_base_url.startswith("https://")
    max_age = c.settings.session_hours * 3600
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, httponly=True, samesite="strict", secure=secure
    )
    # Readable by the UI's script, which echoes it in X-CSRF-Token (double submit).
    response.set_cookie(
        CSRF_COOKIE,
        sess.csrf_token,
        max_age=max_age,
        httponly=False,
        samesite="strict",
        secure=secure,
    )
    user_out = UserOut.model_validate(c.identity.user_view(db, user))
    return LoginOut(token=token, csrf_token=sess.csrf_token, user=user_out)


@router.post("/logout", status_code=204)
def logout(request: Request, response: Response, caller: Caller, db: DB, c: AppContainer) -> None:
    c.identity.logout(db, caller)
    audit(request, db, c, "auth.sign_out", tenant_id=None)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)


@router.get("/me")
def me(caller: Caller, db: DB, c: AppContainer) -> MeOut:
    if caller.user_id is None:
        from mailgate.adapters.db.tables import Tenant

        tenant_names = {
            t.id: t.name for t in db.query(Tenant).filter(Tenant.id.in_(list(caller.roles)))
        }
        return SignedInApiKeyOut(
            kind="api_key",
            name=caller.name,
            system_admin=False,
            roles={tenant_names[tid]: role for tid, role in caller.roles.items()},
        )
    from mailgate.adapters.db.tables import User

    user = db.get(User, caller.user_id)
    assert user is not None
    view = {"kind": "user", **c.identity.user_view(db, user), "csrf_token": caller.csrf_token}
    return SignedInUserOut.model_validate(view)
