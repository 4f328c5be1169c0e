"""OAuth2 of e-mail servers (README "OAuth2 for SMTP")."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from mailgate.domain.access import Perm
from mailgate.entrypoints import web
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, require_system_admin
from mailgate.schemas.out.email_server import EmailServerOut
from mailgate.schemas.out.oauth2 import AuthorizationUrlOut
from mailgate.services.email_servers import SYSTEM_SERVER_NAME
from mailgate.services.oauth2.authorization import (
    STATE_LIFETIME,
    CallbackRejected,
    Started,
    browser_cookie_name,
    server_page,
    ui_redirect,
)
from mailgate.services.tenants import tenant_for

router = APIRouter(tags=["oauth2"])
BASE = "/api/v1/tenants/{tenant}/email-servers/{name}/oauth2"
CALLBACK = "/settings/oauth2code"


def _started(c: AppContainer, started: Started, response: Response) -> AuthorizationUrlOut:
    """The URL, and the cookie that binds the flow to this browser. SameSite=Lax: the
    browser comes back from the provider by a top-level redirect, which Strict cookies (the
    session's) do not survive."""
    response.set_cookie(
        started.cookie_name,
        started.cookie_value,
        max_age=int(STATE_LIFETIME.total_seconds()),
        path=CALLBACK,
        httponly=True,
        samesite="lax",
        secure=c.settings.public_base_url.startswith("https://"),
    )
    return AuthorizationUrlOut(authorization_url=started.url)


@router.post(f"{BASE}/authorize")
def authorize(
    tenant: str,
    name: str,
    request: Request,
    response: Response,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> AuthorizationUrlOut:
    """Start the authorization code grant: open ``authorization_url`` in the browser."""
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    row = c.servers.get(db, t.id, name)
    started = c.oauth2.authorization.begin(db, row)
    audit(request, db, c, "oauth2.authorize", tenant_id=t.id, detail={"server": name})
    return _started(c, started, response)


@router.post(f"{BASE}/refresh")
def refresh(tenant: str, name: str, caller: Caller, db: DB, c: AppContainer) -> EmailServerOut:
    """Refresh the tokens now; answers with the configuration and its ``oauth2_status``."""
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    server_id = c.servers.get(db, t.id, name).id
    # End this request's transaction first: the refresh takes the row lock in its own, and
    # on SQLite an open write transaction here would block it.
    db.commit()
    c.oauth2.tokens.refresh_now(server_id)
    db.expire_all()
    return EmailServerOut.model_validate(c.servers.view(c.servers.get(db, t.id, name)))


@router.delete(f"{BASE}", status_code=status.HTTP_204_NO_CONTENT)
def forget(
    tenant: str, name: str, request: Request, caller: Caller, db: DB, c: AppContainer
) -> Response:
    """Forget the stored tokens; the configuration must be authorized again."""
    t = tenant_for(db, caller, tenant, Perm.SERVERS_WRITE)
    c.oauth2.authorization.forget(db, c.servers.get(db, t.id, name))
    audit(request, db, c, "oauth2.forget", tenant_id=t.id, detail={"server": name})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---- the system e-mail server (system_admin only): same flow, no tenant ----------------------
SYSTEM = "/api/v1/system/email-server/oauth2"


@router.post(f"{SYSTEM}/authorize", tags=["system"])
def system_authorize(
    request: Request, response: Response, caller: Caller, db: DB, c: AppContainer
) -> AuthorizationUrlOut:
    require_system_admin(caller)
    row = c.servers.get(db, None, SYSTEM_SERVER_NAME)
    started = c.oauth2.authorization.begin(db, row)
    audit(request, db, c, "oauth2.authorize", tenant_id=None, detail={"server": row.name})
    return _started(c, started, response)


@router.post(f"{SYSTEM}/refresh", tags=["system"])
def system_refresh(caller: Caller, db: DB, c: AppContainer) -> EmailServerOut:
    require_system_admin(caller)
    server_id = c.servers.get(db, None, SYSTEM_SERVER_NAME).id
    db.commit()  # see refresh(): the refresh runs in its own transaction
    c.oauth2.tokens.refresh_now(server_id)
    db.expire_all()
    row = c.servers.get(db, None, SYSTEM_SERVER_NAME)
    return EmailServerOut.model_validate(c.servers.view(row))


@router.delete(SYSTEM, status_code=status.HTTP_204_NO_CONTENT, tags=["system"])
def system_forget(request: Request, caller: Caller, db: DB, c: AppContainer) -> Response:
    require_system_admin(caller)
    audit(request, db, c, "oauth2.forget", tenant_id=None, detail={"server": SYSTEM_SERVER_NAME})
    c.oauth2.authorization.forget(db, c.servers.get(db, None, SYSTEM_SERVER_NAME))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(CALLBACK, response_class=RedirectResponse, status_code=303)
def callback(
    request: Request,
    db: DB,
    c: AppContainer,
    state: str | None = None,
    code: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    """The redirect URI. ``state`` is the credential here: the browser arrives from the
    provider, and an unknown, used or expired state is a ``400`` that stores nothing."""
    try:
        result = c.oauth2.authorization.complete(
            db,
            state=state,
            code=code,
            error=error,
            error_description=error_description,
            browser_key=request.cookies.get(browser_cookie_name(state)) if state else None,
        )
    except CallbackRejected as exc:
        # A person arrives here from the provider: a page, not problem JSON (scripts that
        # ask for JSON still get the problem document).
        if "text/html" not in request.headers.get("accept", ""):
            raise
        back = server_page(*exc.server) if exc.server else "/ui/email-servers"
        label = (
            ("the system e-mail server" if not exc.server[0] else f"e-mail server {exc.server[1]}")
            if exc.server
            else "your e-mail servers"
        )
        return web.oauth2_callback_failed(request, exc.detail, back, label)
    # No session here (the browser comes from the provider): the actor is the account that
    # consented, as far as the token names it.
    audit(
        request,
        db,
        c,
        "oauth2.consent" if result.ok else "oauth2.consent_failed",
        tenant_id=result.tenant_id,
        actor=f"oauth2:{result.account or 'unknown account'}",
        detail={"server": result.server, "account": result.account, "message": result.message},
    )
    answer = RedirectResponse(ui_redirect(result), status_code=status.HTTP_303_SEE_OTHER)
    if state:
        answer.delete_cookie(browser_cookie_name(state), path=CALLBACK)
    return answer
