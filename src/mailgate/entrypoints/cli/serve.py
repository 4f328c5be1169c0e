"""``mailgate serve``, ``init``, ``migrate`` and ``keygen``: running the service and its setup."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mailgate.adapters.metrics import enable_multiprocess
from mailgate.adapters.secrets import generate_key
from mailgate.bootstrap import build, first_start
from mailgate.config import Settings
from mailgate.entrypoints.cli.common import _container, _logging


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (MAILGATE_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port (MAILGATE_PORT); 0 picks a free one.")
    ] = None,
) -> None:
    """Run the API and the web UI, the SMTP submission listener (MAILGATE_SMTP_LISTEN,
    default 127.0.0.1:2587; empty: off), and the delivery worker processes beside them
    (MAILGATE_WORKERS: default one per CPU core beyond the first; 0 for an API-only process)."""
    import signal

    import uvicorn

    from mailgate.entrypoints import access_log
    from mailgate.entrypoints.api.app import create_app
    from mailgate.entrypoints.http_protocol import with_header_timeout
    from mailgate.entrypoints.smtp.listener import ConfigError, SmtpListener, listener_config
    from mailgate.entrypoints.supervisor import WorkerSupervisor

    settings = Settings()
    _logging(settings)
    try:
        smtp_config = listener_config(settings)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    metrics_dir = None
    if settings.worker_processes:
        # /metrics of this process sums the counters of the worker processes too.
        metrics_dir = Path(tempfile.mkdtemp(prefix="mailgate-metrics-"))
        enable_multiprocess(metrics_dir)
    c = build(settings)
    first_start(c)
    from mailgate.entrypoints.keeper import TokenKeeper

    config = uvicorn.Config(
        # The remote-output worker: only this process can hand mail to its agents.
        create_app(
            c,
            remote_output_worker=True,
            smtp=SmtpListener(c, smtp_config) if smtp_config.endpoints else None,
        ),
        host=host or settings.host,
        port=port if port is not None else settings.port,  # 0: an ephemeral port
        log_level=settings.log_level.lower(),
        # Below INFO nothing is logged per request: then uvicorn need not even build the
        # access log line (client address, quoted path) for every request.
        access_log=logging.getLevelNamesMapping().get(settings.log_level.upper(), 0)
        <= logging.INFO,
        proxy_headers=False,
        http=with_header_timeout(settings.header_timeout_s),
    )
    access_log.install()  # after uvicorn.Config, which configures logging
    server = uvicorn.Server(config)
    workers = WorkerSupervisor(settings.worker_processes, stopping=lambda: server.should_exit)

    # uvicorn handles SIGTERM and SIGINT while it serves, and afterwards raises the signal
    # again under the handlers it found: these, so that a clean shutdown ends with status 0
    # (after the workers stopped) instead of dying by the signal. Before uvicorn listens they
    # make it stop as soon as it has started.
    def shutting_down(_signum: int, _frame: object) -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, shutting_down)
    keeper = TokenKeeper(c.oauth2.keeper)
    keeper.start()
    workers.start()
    try:
        server.run()
    finally:
        codes = workers.stop()
        keeper.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if any(code != 0 for code in codes.values()):
        logging.getLogger("mailgate.supervisor").warning("worker exit statuses: %s", codes)
    if not server.started:
        raise typer.Exit(3)  # as uvicorn.run: the API could not start (port in use, ...)


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
