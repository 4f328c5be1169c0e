"""Request dependencies: the container, a unit of work, and the authenticated caller."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from mailgate.bootstrap import Container
from mailgate.domain.access import Principal
from mailgate.domain.errors import Forbidden, Unauthenticated

SESSION_COOKIE = "mailgate_session"
CSRF_COOKIE = "mailgate_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def get_db(request: Request) -> Iterator[Session]:
    with get_container(request).session() as db:
        yield db


AppContainer = Annotated[Container, Depends(get_container)]
# scope="function": commit before the response is sent, so a 2xx means it is stored.
DB = Annotated[Session, Depends(get_db, scope="function")]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("use 'Authorization: Bearer <token>'")
        return value.strip()
    return None


def credential(request: Request) -> tuple[str, bool]:
    """The bearer token or session cookie of the request, and whether it is the cookie."""
    token = bearer_token(request)
    if token is not None:
        return token, False
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthenticated("sign in or send an API key as a bearer token")
    return cookie, True


def check_csrf(request: Request, principal: Principal) -> None:
    """A browser session changes nothing without the double-submit CSRF token."""
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
            raise Forbidden("missing or wrong CSRF token (X-CSRF-Token header)")


def get_principal(request: Request, db: DB, c: AppContainer) -> Principal:
    token, is_cookie = credential(request)
    principal = c.identity.authenticate(db, token)
    if is_cookie:
        check_csrf(request, principal)
    request.state.principal = principal
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


def require_system_admin(principal: Principal) -> None:
    if not principal.system_admin:
        raise Forbidden("only a system administrator may do this")
