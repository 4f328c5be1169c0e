"""The API's side of the audit trail (``services/audit.py``): who is asking, from where.

``RequestSource`` (ASGI middleware) puts the client address of each request in
``services.audit.REQUEST_SOURCE``; ``audit`` records a change in the request's transaction
with the authenticated caller as the actor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from mailgate.adapters.db.tables import EmailServer
from mailgate.bootstrap import Container
from mailgate.schemas.email_server import SECRET_FIELDS
from mailgate.schemas.out.email_server import EmailServerOut
from mailgate.services import audit as trail


class RequestSource:
    """Sets ``REQUEST_SOURCE`` to the client's address for the request's duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = trail.REQUEST_SOURCE.set(str(client[0])[:100] if client else None)
        try:
            await self.app(scope, receive, send)
        finally:
            trail.REQUEST_SOURCE.reset(token)


def audit(
    request: Request,
    db: Session,
    c: Container,
    action: str,
    *,
    tenant_id: int | None,
    detail: Mapping[str, Any] | None = None,
    actor: str | None = None,
) -> None:
    """Record ``action`` by the request's caller, in the request's transaction."""
    if actor is None:
        principal = getattr(request.state, "principal", None)
        actor = principal.name if principal is not None else "anonymous"
    client = request.client.host if request.client else None
    trail.record(
        db, action, tenant_id=tenant_id, actor=actor, now=c.clock(), detail=detail, source=client
    )


# What a configuration's diff leaves out: state that changes without anyone changing it.
_SERVER_STATE = ("oauth2_status", "delivery", "last_test", "created_at", "updated_at", "id")


def server_snapshot(c: Container, row: EmailServer | None) -> dict[str, Any]:
    """A configuration as the audit trail compares it (its API view: no secrets)."""
    if row is None:
        return {}
    view: dict[str, Any] = EmailServerOut.model_validate(c.servers.view(row)).model_dump(
        mode="json", by_alias=True
    )
    return view


def server_changes(
    before: Mapping[str, Any], after: Mapping[str, Any], body: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The field diff of a configuration; secret fields the request set show as changed."""
    changes = trail.field_diff(before, after, ignore=_SERVER_STATE)
    if body:
        changes.update(trail.secrets_given(body, SECRET_FIELDS))
    return changes
