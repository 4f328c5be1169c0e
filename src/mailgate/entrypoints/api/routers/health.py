"""Liveness with database and queue state."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

from fastapi import APIRouter, Response, status

from mailgate.adapters.db import processes
from mailgate.adapters.db.health import MIN_FREE_BYTES
from mailgate.adapters.metrics import CONTENT_TYPE, queue_numbers
from mailgate.bootstrap import Container
from mailgate.entrypoints.api.deps import AppContainer
from mailgate.schemas.out.system import HealthOut, QueueOut, WritePathOut

log = logging.getLogger("mailgate.api")

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    responses={
        503: {
            "model": HealthOut,
            "description": "Submissions would fail: the database cannot be read or written, "
            "or (SQLite) the data directory is nearly full",
        }
    },
)
def healthz(c: AppContainer, response: Response) -> HealthOut:
    """``queue.queued``: messages waiting for delivery (queued, scheduled, deferred, sending);
    ``queue.oldest_s``: how long the oldest message that is due has waited for a worker (a
    growing number means the workers do not keep up, or none runs). ``write``: whether this
    process can write (its last write's outcome and age; it writes a heartbeat to find out
    when it wrote nothing for 10 s) and, on SQLite, the free space in the data directory."""
    health = c.write_health
    try:
        health.probe(lambda: _beat(c))
    except Exception:
        log.warning("the /healthz write probe failed", exc_info=True)
    write = _write_path(c)
    healthy = write.last_commit != "failed" and (
        write.free_bytes is None or write.free_bytes >= MIN_FREE_BYTES
    )
    try:
        with c.sessions() as db:
            numbers = queue_numbers(db, c.clock())
    except Exception:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthOut(status="error", database="unavailable", write=write, queue=None)
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
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
    return HealthOut(status="ok" if healthy else "error", database="ok", write=write, queue=queue)


def _beat(c: Container) -> None:
    with c.engine.begin() as conn:
        processes.beat(conn, f"{socket.gethostname()}:{os.getpid()}:api"[:100], "api", c.clock())


def _write_path(c: Container) -> WritePathOut:
    state = c.write_health.state
    now = time.time()
    free = None
    if c.engine.dialect.name == "sqlite" and c.engine.url.database not in (None, "", ":memory:"):
        try:
            free = shutil.disk_usage(Path(str(c.engine.url.database)).parent).free
        except OSError:
            free = None
    return WritePathOut(
        last_commit="none" if state.ok is None else "ok" if state.ok else "failed",
        last_commit_age_s=None if state.at is None else round(now - state.at, 3),
        last_ok_age_s=None if state.last_ok_at is None else round(now - state.last_ok_at, 3),
        error=state.error,
        failed_commits=state.failures,
        free_bytes=free,
    )


@router.get("/metrics", response_class=Response)
def metrics(c: AppContainer) -> Response:
    """Prometheus text format: messages by status, queue depth, delivery latency, replies."""
    return Response(c.metrics.render(), media_type=CONTENT_TYPE)
