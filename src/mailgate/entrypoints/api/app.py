"""The FastAPI application factory."""

from __future__ import annotations

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
    app = FastAPI(
        title="mailgate",
        version=__version__,
        description="Multi-tenant outbound e-mail gateway. Errors are application/problem+json.",
    )
    app.state.container = container
    # Agents connect here, so this process's workers can deliver remote output.
    container.hub.accepting = True
    problems.install(app)
    for module in (
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
    web.install(app)
    app.add_middleware(BodyLimit, max_bytes=container.settings.max_request_bytes)
    app.add_middleware(NoNulInUrl)
    return app
