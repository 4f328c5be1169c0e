"""Forgot password: ask for a link, then use it (README "Web admin UI")."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from fastapi import APIRouter, BackgroundTasks, Request, status
from pydantic import Field

from mailgate.adapters.db.tables import SystemSetting
from mailgate.bootstrap import Container
from mailgate.domain.errors import Throttled
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer
from mailgate.schemas.common import StrictModel
from mailgate.schemas.out.system import ResetDoneOut, ResetRequestedOut
from mailgate.services import password_reset as svc
from mailgate.services.system_mailer import SystemMailError

router = APIRouter(prefix="/api/v1/auth/password-reset", tags=["auth"])
log = logging.getLogger("mailgate.password_reset")


class ResetIn(StrictModel):
    username: str = Field(min_length=1, max_length=64)


class ConfirmIn(StrictModel):
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


def _send(c: Container, user_id: int, token: str) -> None:
    from mailgate.adapters.db.tables import User

    with c.session() as db:
        user = db.get(User, user_id)
        if user is None or not user.email:
            log.warning("password reset for user id %s not sent: the user changed", user_id)
            svc.withdraw_unsent(db, c.clock, token)
            return
        setting = db.get(SystemSetting, "public_base_url")
        base = str(setting.value) if setting and setting.value else c.settings.public_base_url
        link = f"{base.rstrip('/')}/ui/reset-password?{urlencode({'token': token})}"
        to, text = user.email, svc.reset_text(user.username, link)
    try:
        c.system_mailer.send_system_mail(to, svc.RESET_SUBJECT, text)
    except SystemMailError as exc:
        # The requester gets 202 regardless; the operator sees why no mail went out. The
        # error carries a scrubbed text (no credentials).
        log.warning("password reset mail for user id %s not sent: %s", user_id, exc)
        # Only sent links count against the limit: the next request (say, once a system
        # e-mail server exists) must send.
        with c.session() as db:
            svc.withdraw_unsent(db, c.clock, token)


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def request_reset(
    body: ResetIn, request: Request, background: BackgroundTasks, db: DB, c: AppContainer
) -> ResetRequestedOut:
    client = request.client.host if request.client else "unknown"
    try:
        c.identity.check_reset_request(db, client)
    except Throttled:
        db.commit()  # the count stays
        raise
    found = svc.request_reset(db, c.clock, body.username)
    if found is not None:
        user, token = found
        # Sent after the response (and after the commit): the answer's timing and content are
        # the same whether or not the account exists.
        background.add_task(_send, c, user.id, token)
    return ResetRequestedOut(
        status="accepted",
        detail="if the account exists and has an e-mail address, a reset link was sent",
    )


@router.post("/confirm")
def confirm_reset(body: ConfirmIn, request: Request, db: DB, c: AppContainer) -> ResetDoneOut:
    user = svc.confirm_reset(db, c.clock, c.identity, body.token, body.password)
    detail = {"username": user.username, "changes": {"password": "changed"}}
    audit(request, db, c, "user.password_reset", tenant_id=None, actor=user.username, detail=detail)
    return ResetDoneOut(status="ok", username=user.username)
