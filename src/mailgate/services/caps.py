"""Per-tenant caps (README "Security model"): how many e-mail server configurations, API
keys, remote clients and webhooks one tenant may have, so that no tenant fills the installation's
database (or the keeper's rounds) for everyone. Settings ``MAILGATE_MAX_*_PER_TENANT``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate.domain.errors import Conflict


def check_room(
    db: Session, table: Any, tenant_id: int, limit: int, what: str, setting: str
) -> None:
    """Raise ``Conflict`` when the tenant has ``limit`` rows of ``table`` already."""
    count = db.scalar(select(func.count()).select_from(table).where(table.tenant_id == tenant_id))
    if count is not None and count >= limit:
        raise Conflict(
            f"this tenant has {count} {what}, the most an installation allows ({setting}); "
            "delete one first"
        )
