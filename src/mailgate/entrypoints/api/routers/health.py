"""Liveness with database and queue state."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from mailgate.adapters.metrics import CONTENT_TYPE, queue_numbers
from mailgate.entrypoints.api.deps import AppContainer
from mailgate.schemas.out.system import HealthOut, QueueOut

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    responses={503: {"model": HealthOut, "description": "The database is unavailable"}},
)
def healthz(c: AppContainer, response: Response) -> HealthOut:
    """``queue.queued``: messages waiting for delivery (queued, scheduled, deferred, sending);
    ``queue.oldest_s``: how long the oldest message that is due has waited for a worker (a
    growing number means the workers do not keep up, or none runs)."""
    try:
        with c.sessions() as db:
            numbers = queue_numbers(db, c.clock())
    except Exception:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthOut(status="error", database="unavailable", queue=None)
    by_status = numbers["by_status"]
    queue = QueueOut(
        queued=numbers["pending"],
        oldest_s=numbers["oldest_ready_s"],
        ready=by_status["queued"],
        scheduled=by_status["scheduled"],
        deferred=by_status["deferred"],
        sending=by_status["sending"],
        held=by_status["held"],
    )
    return HealthOut(status="ok", database="ok", queue=queue)


@router.get("/metrics", response_class=Response)
def metrics(c: AppContainer) -> Response:
    """Prometheus text format: messages by status, queue depth, delivery latency, replies."""
    return Response(c.metrics.render(), media_type=CONTENT_TYPE)
