"""Installation-wide settings (remote clients allowed, the public base URL, the outbound
destination policy), for system administrators only."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from pydantic import AfterValidator, Field
from sqlalchemy import select, update

from mailgate.adapters.db.tables import RemoteClient, SystemSetting
from mailgate.domain.outbound import DEFAULT_DENY_NETWORKS, parse_network
from mailgate.domain.outbound import SETTING_KEY as OUTBOUND_KEY
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, require_system_admin
from mailgate.schemas.common import SingleLine, StrictModel
from mailgate.schemas.out.system import SystemSettingsOut
from mailgate.schemas.remote import CLOSE_NOT_ALLOWED
from mailgate.services.audit import field_diff
from mailgate.services.installation import DEFAULT_SYSTEM_SETTINGS

router = APIRouter(prefix="/api/v1/system/settings", tags=["system"])


def _check_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return value.rstrip("/")


def _check_network(value: str) -> str:
    return str(parse_network(value))


class OutboundPolicyIn(StrictModel):
    deny_networks: list[Annotated[SingleLine, AfterValidator(_check_network)]] = Field(
        max_length=200
    )


class SystemSettingsIn(StrictModel):
    """Omitted fields keep their value."""

    allow_remote_clients: bool | None = None
    public_base_url: Annotated[SingleLine, AfterValidator(_check_base_url)] | None = None
    outbound_policy: OutboundPolicyIn | None = None


def _current(db: DB, c: AppContainer) -> SystemSettingsOut:
    values: dict[str, Any] = {
        **DEFAULT_SYSTEM_SETTINGS,
        "public_base_url": c.settings.public_base_url,
        OUTBOUND_KEY: {"deny_networks": list(DEFAULT_DENY_NETWORKS)},
    }
    for row in db.scalars(select(SystemSetting).where(SystemSetting.key.in_(list(values)))):
        values[row.key] = row.value
    return SystemSettingsOut.model_validate(values)


@router.get("")
def get_settings(caller: Caller, db: DB, c: AppContainer) -> SystemSettingsOut:
    require_system_admin(caller)
    return _current(db, c)


@router.put("")
def put_settings(
    body: SystemSettingsIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> SystemSettingsOut:
    require_system_admin(caller)
    before = _current(db, c).model_dump(mode="json")
    for key, value in body.model_dump(exclude_none=True).items():
        row = db.get(SystemSetting, key)
        if row is None:
            db.add(SystemSetting(key=key, value=value))
        else:
            row.value = value
    db.flush()
    values = _current(db, c)
    changes = field_diff(before, values.model_dump(mode="json"))
    if changes:
        audit(request, db, c, "system.settings", tenant_id=None, detail={"changes": changes})
    if body.outbound_policy is not None:
        db.commit()
        c.outbound_policy.invalidate()
    if body.allow_remote_clients is False:
        # Nobody may stay connected, in this process or another (they notice at their next
        # heartbeat); the list must say so at once.
        db.execute(update(RemoteClient).values(connected_until=None))
        db.commit()
        # Switching remote clients off refuses new connections and ends the open ones now.
        for agent in c.hub.connected():
            c.hub.call_soon_threadsafe_disconnect(
                agent.tenant_id, agent.name, CLOSE_NOT_ALLOWED, "remote clients were switched off"
            )
    return values
