"""``mailgate serve``, ``init``, ``migrate`` and ``keygen``: running the service and its setup."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from mailgate.adapters.secrets import generate_key
from mailgate.bootstrap import build, first_start
from mailgate.config import Settings
from mailgate.entrypoints.cli.common import _container


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (MAILGATE_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port (MAILGATE_PORT); 0 picks a free one.")
    ] = None,
) -> None:
    """Run the API, the web UI and the delivery worker in one process."""
    import uvicorn

    from mailgate.entrypoints.api.app import create_app

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if settings.log_level.upper() != "DEBUG":
        # Alembic's plugin and context lines at every start are noise, not news.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    c = build(settings)
    first_start(c)
    from mailgate.entrypoints.keeper import TokenKeeper

    keeper = TokenKeeper(c.oauth2.keeper)
    keeper.start()
    try:
        uvicorn.run(
            create_app(c),
            host=host or settings.host,
            port=port if port is not None else settings.port,  # 0: an ephemeral port
            log_level=settings.log_level.lower(),
            # Below INFO nothing is logged per request: then uvicorn need not even build the
            # access log line (client address, quoted path) for every request.
            access_log=logging.getLevelNamesMapping().get(settings.log_level.upper(), 0)
            <= logging.INFO,
            proxy_headers=False,
        )
    finally:
        keeper.stop()


def init() -> None:
    """Set up a new installation: the schema, the tenant 'home' and the administrator
    'admin' (password from MAILGATE_ADMIN_PASSWORD, else generated and printed once)."""
    c = _container()
    if first_start(c) is None:
        typer.echo("mailgate: the database has users already; nothing was created")


def migrate() -> None:
    """Create or upgrade the database schema (also done at every start)."""
    c = _container()
    c.installation.upgrade_schema()
    typer.echo("database is at the newest schema")


def keygen() -> None:
    """Print a new key for MAILGATE_SECRET_KEY."""
    typer.echo(generate_key())
