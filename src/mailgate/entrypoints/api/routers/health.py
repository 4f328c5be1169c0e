"""Liveness with database and queue state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from mailgate.adapters.metrics import CONTENT_TYPE, queue_numbers
from mailgate.entrypoints.api.deps import AppContainer

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(c: AppContainer) -> Any:
    """``queue.queued``: messages waiting for delivery (queued, scheduled, deferred, sending);
    ``queue.oldest_s``: how long the oldest message that is due has waited for a worker (a
    growing number means the workers do not keep up, or none runs)."""
    try:
        with c.sessions() as db:
            numbers = queue_numbers(db, c.clock())
    except Exception:
        return JSONResponse(
            {"status": "error", "database": "unavailable", "queue": None}, status_code=503
        )
    by_status = numbers["by_status"]
    return {
        "status": "ok",
        "database": "ok",
        "queue": {
            "queued": numbers["pending"],
            "oldest_s": numbers["oldest_ready_s"],
            "ready": by_status["queued"],
            "scheduled": by_status["scheduled"],
            "deferred": by_status["deferred"],
            "sending": by_status["sending"],
            "held": by_status["held"],
        },
    }


@router.get("/metrics", response_class=Response)
def metrics(c: AppContainer) -> Response:
    """Prometheus text format: messages by status, queue depth, delivery latency, replies."""
    return Response(c.metrics.render(), media_type=CONTENT_TYPE)
