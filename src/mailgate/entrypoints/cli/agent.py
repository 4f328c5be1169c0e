"""``mailgate agent``: the remote client agent that delivers a tenant's mail from its site."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from mailgate.entrypoints.cli.common import _fail


def agent(
    url: Annotated[
        str,
        typer.Option(
            envvar="MAILGATE_AGENT_URL",
            help="mailgate's base URL, e.g. https://mail.example.com (wss:// for https).",
        ),
    ],
    token: Annotated[
        str,
        typer.Option(
            envvar="MAILGATE_AGENT_TOKEN",
            help="The remote client's token (mgr_...). Prefer the environment variable: "
            "the command line is visible to other users through ps.",
            show_default=False,
        ),
    ],
    ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="MAILGATE_AGENT_CA_FILE",
            exists=True,
            dir_okay=False,
            help="Extra CA certificate(s) (PEM) to trust for mailgate's certificate.",
        ),
    ] = None,
    backoff_max: Annotated[
        float, typer.Option(envvar="MAILGATE_AGENT_BACKOFF_MAX_S", min=1, help="Seconds.")
    ] = 60.0,
    allow_http: Annotated[
        bool,
        typer.Option(
            "--allow-http",
            envvar="MAILGATE_AGENT_ALLOW_HTTP",
            help="Allow plain http:// to another machine (jobs carry SMTP credentials).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(envvar="MAILGATE_LOG_LEVEL")] = "INFO",
) -> None:
    """Run a remote client agent: connect out to mailgate and deliver its tenant's mail."""
    import asyncio
    import signal

    from mailgate.entrypoints.agent import (
        Agent,
        AgentOptions,
        TransportJobRunner,
        check_transport_security,
        websocket_url,
    )

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        check_transport_security(websocket_url(url), allow_http)
    except ValueError as exc:
        _fail(f"--url: {exc}")
    options = AgentOptions(
        url=url, token=token, ca_file=ca_file, backoff_max_s=backoff_max, allow_http=allow_http
    )

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await Agent(options, TransportJobRunner()).run(stop)

    raise typer.Exit(asyncio.run(main()))
