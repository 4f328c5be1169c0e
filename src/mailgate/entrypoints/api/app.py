"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mailgate import __version__
from mailgate.bootstrap import Container
from mailgate.entrypoints import web
from mailgate.entrypoints.api import problems
from mailgate.entrypoints.api.limits import BodyLimit, NoNulInUrl
from mailgate.entrypoints.api.routers import (
    api_keys,
    audit,
    auth,
    certificates,
    email_servers,
    health,
    messages,
    oauth2,
    password_reset,
    remote_clients,
    server_tests,
    system_settings,
    tenants,
    transfer,
    users,
)


def create_app(container: Container) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # MAILGATE_WORKERS delivery workers share this process's event loop; on shutdown
        # (SIGTERM to uvicorn) they finish what they send and give back the rest.
        from mailgate.entrypoints.worker import Worker, default_worker_id

        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(Worker(container, worker_id=default_worker_id(i)).run(stop))
            for i in range(container.settings.workers)
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(
        lifespan=lifespan,
        title="mailgate",
        version=__version__,
        description="Multi-tenant outbound e-mail gateway. Errors are application/problem+json.",
    )
    app.state.container = container
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
        remote_clients,
        server_tests,
        system_settings,
        transfer,
        audit,
        oauth2,
        certificates,
    ):
        app.include_router(module.router)
    # The submission endpoint, by far the most called, is served by a plain route matched
    # before all others (see messages.submit_route); its FastAPI route documents it.
    app.router.routes.insert(0, messages.submit_route())
    web.install(app)
    app.add_middleware(BodyLimit, max_bytes=container.settings.max_request_bytes)
    app.add_middleware(NoNulInUrl)
    return app
