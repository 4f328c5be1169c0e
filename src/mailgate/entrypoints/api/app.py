"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from mailgate import __version__
from mailgate.bootstrap import Container
from mailgate.entrypoints import web
from mailgate.entrypoints.api import problems
from mailgate.entrypoints.api.audit_trail import RequestSource
from mailgate.entrypoints.api.limits import BodyLimit, NoNulInUrl, NoSniff
from mailgate.entrypoints.api.routers import (
    api_keys,
    audit,
    auth,
    certificates,
    email_servers,
    health,
    limit_presets,
    messages,
    oauth2,
    password_reset,
    remote_clients,
    server_tests,
    smtp_submission,
    system_settings,
    tenants,
    transfer,
    users,
    webhooks,
)
from mailgate.entrypoints.smtp.listener import SmtpListener


def create_app(
    container: Container,
    *,
    remote_output_worker: bool = False,
    smtp: SmtpListener | None = None,
) -> FastAPI:
    """The API and web UI. With ``remote_output_worker`` (``mailgate serve``) one delivery
    worker runs in this process for the mail of remote-output configurations whose agents
    connect here: only this process holds their WebSockets. All other mail is delivered by
    the worker processes ``mailgate serve`` supervises, or by ``mailgate worker``.

    ``smtp``: the SMTP submission listener, run on the API's event loop (on SQLite the
    group commit of both writes on that loop) from startup to shutdown."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # On shutdown (SIGTERM to uvicorn) the worker finishes what it sends and gives back
        # the rest.
        from mailgate.entrypoints.worker import Worker, default_worker_id

        stop = asyncio.Event()
        tasks = []
        if smtp is not None:
            await smtp.start()
        if remote_output_worker:
            worker = Worker(container, worker_id=default_worker_id(0), remote_only=True)
            tasks.append(asyncio.create_task(worker.run(stop)))
        try:
            yield
        finally:
            if smtp is not None:
                await smtp.stop()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    # Swagger UI and ReDoc assets come from the fastapi-offline package, not a CDN: /docs
    # works on a machine without internet.
    app = FastAPIOffline(
        # FastAPI's native OpenTelemetry looks for configured providers on every request
        # (2 % of a submission's CPU); mailgate configures none (its metrics are /metrics).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        lifespan=lifespan,
        title="mailgate",
        version=__version__,
        description="Multi-tenant outbound e-mail gateway. Errors are application/problem+json.",
    )
    app.state.container = container
    app.state.smtp = smtp
    # Agents connect here, so this process's workers can deliver remote output.
    container.hub.accepting = True
    problems.install(app)
    for module in (
        messages,
        health,
        auth,
        password_reset,
        tenants,
        users,
        api_keys,
        email_servers,
        limit_presets,
        remote_clients,
        server_tests,
        smtp_submission,
        system_settings,
        transfer,
        audit,
        oauth2,
        certificates,
        webhooks,
    ):
        app.include_router(module.router)
    # The submission endpoint, by far the most called, is served by a plain route matched
    # before all others (see messages.submit_route); its FastAPI route documents it.
    app.router.routes.insert(0, messages.submit_route())
    web.install(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=container.settings.max_request_bytes,
        timeout_s=container.settings.body_timeout_s,
    )
    app.add_middleware(NoNulInUrl)
    app.add_middleware(NoSniff)
    app.add_middleware(RequestSource)
    return app
