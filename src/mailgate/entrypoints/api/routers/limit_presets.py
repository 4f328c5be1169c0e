"""Providers' sending limits as presets for a configuration's ``limits`` (README "Provider
limits, pauses and fairness"); the numbers live in ``schemas/email_server.LIMIT_PRESETS``."""

from __future__ import annotations

from fastapi import APIRouter

from mailgate.domain.access import Perm
from mailgate.entrypoints.api.deps import DB, Caller
from mailgate.schemas.email_server import LIMIT_PRESETS
from mailgate.schemas.out.email_server import LimitPresetsOut
from mailgate.services.tenants import tenant_for

router = APIRouter(prefix="/api/v1/tenants/{tenant}/limit-presets", tags=["email-servers"])


@router.get("")
def limit_presets(tenant: str, caller: Caller, db: DB) -> LimitPresetsOut:
    tenant_for(db, caller, tenant, Perm.SERVERS_READ)
    return LimitPresetsOut.model_validate(
        {"items": [{"name": name, **preset} for name, preset in LIMIT_PRESETS.items()]}
    )
