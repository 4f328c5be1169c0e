"""Liveness with database and queue state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from mailgate.adapters.db.tables import Message
from mailgate.entrypoints.api.deps import AppContainer

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(c: AppContainer) -> Any:
    try:
        with c.sessions() as db:
            queued, oldest = db.execute(
                select(func.count(), func.min(Message.created_at)).where(
                    Message.status.in_(("queued", "deferred", "sending"))
                )
            ).one()
    except Exception:
        return JSONResponse(
            {"status": "error", "database": "unavailable", "queue": None}, status_code=503
        )
    oldest_s = int((c.clock() - oldest).total_seconds()) if oldest else 0
    return {"status": "ok", "database": "ok", "queue": {"queued": queued, "oldest_s": oldest_s}}
