"""Sign in and out, and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import Field

from mailgate.domain.errors import Forbidden, MailgateError, ValidationFailed
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import CSRF_COOKIE, DB, SESSION_COOKIE, AppContainer, Caller
from mailgate.schemas.common import SingleLine, StrictModel
from mailgate.schemas.out.identity import (
    LoginOut,
    MeOut,
    PasswordChangedOut,
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


class PasswordChangeIn(StrictModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


@router.post("/password")
def change_password(
    body: PasswordChangeIn,
    request: Request,
    response: Response,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> PasswordChangedOut:
    """Change one's own password (the web UI's "My account"). Every session of the user ends,
    this one too: sign in again with the new password."""
    from mailgate.adapters.db.tables import User
    from mailgate.services.identity import check_password_strength, hash_password

    if caller.user_id is None:
        raise Forbidden("an API key has no password; users change theirs when signed in")
    user = db.get(User, caller.user_id)
    if user is None:
        raise Forbidden("the signed-in user no longer exists")
    check_password_strength(body.new_password, "new_password")
    # Guessing the current password through a stolen session is throttled like sign-ins.
    client = request.client.host if request.client else "unknown"
    name = user.username
    c.identity.check_sign_in_throttle(db, name, client)
    stored = user.password_hash
    db.commit()  # Argon2 runs outside any transaction (on SQLite one holds the write lock)
    if not c.identity.password_matches(stored, body.current_password):
        c.identity.record_sign_in_failure(db, name, client)
        db.commit()  # the failure counts although the request fails
        raise ValidationFailed.one("current_password", "this is not your current password")
    new_hash = hash_password(body.new_password, c.identity.hasher)
    user = db.get(User, caller.user_id)
    if user is None:
        raise Forbidden("the signed-in user no longer exists")
    c.identity.set_password(db, user, body.new_password, password_hash=new_hash)
    audit(request, db, c, "auth.password_changed", tenant_id=None, actor=user.username)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return PasswordChangedOut(
        status="ok",
        username=user.username,
        detail="password changed; every session ended: sign in with the new password",
    )


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
