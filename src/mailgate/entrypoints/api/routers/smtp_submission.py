"""How applications reach the SMTP submission listener (README "SMTP submission")."""

from __future__ import annotations

from fastapi import APIRouter, Request

from mailgate.domain.access import Perm
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller
from mailgate.entrypoints.smtp.listener import connection_hints
from mailgate.schemas.out.smtp import SmtpSubmissionOut
from mailgate.services.tenants import tenant_for

router = APIRouter(prefix="/api/v1/tenants/{tenant}/smtp-submission", tags=["smtp-submission"])


@router.get("")
def smtp_submission(
    tenant: str, caller: Caller, db: DB, c: AppContainer, request: Request
) -> SmtpSubmissionOut:
    """Host, ports, TLS and user name for an application that sends over SMTP (for the
    people who manage the tenant's API keys, whose keys are the passwords)."""
    t = tenant_for(db, caller, tenant, Perm.KEYS_MANAGE)
    hints = connection_hints(c.settings, getattr(request.app.state, "smtp", None), t.name)
    return SmtpSubmissionOut.model_validate(hints)
