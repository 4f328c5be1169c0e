"""``mailgate smtp``: the SMTP submission listener alone, a process of its own."""

from __future__ import annotations

import asyncio

import typer

from mailgate.bootstrap import build
from mailgate.config import Settings
from mailgate.entrypoints.cli.common import _fail, _logging


def smtp() -> None:
    """Accept mail over SMTP (MAILGATE_SMTP_LISTEN, MAILGATE_SMTPS_LISTEN) without the API;
    delivery is the workers' (`mailgate serve` or `mailgate worker`). SIGTERM stops: the
    messages being stored get their reply, then every connection is closed with 421."""
    import signal

    import uvloop

    from mailgate.entrypoints.smtp.listener import ConfigError, SmtpListener, listener_config

    settings = Settings()
    _logging(settings)
    try:
        config = listener_config(settings)
    except ConfigError as exc:
        _fail(str(exc))
    if not config.endpoints:
        _fail("MAILGATE_SMTP_LISTEN and MAILGATE_SMTPS_LISTEN are both empty: nothing to listen on")
    c = build(settings)
    c.installation.upgrade_schema()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        listener = SmtpListener(c, config)
        await listener.start()
        for host, port, implicit in listener.addresses:
            typer.echo(f"mailgate smtp: listening on {host}:{port}{' (TLS)' if implicit else ''}")
        await stop.wait()
        await listener.stop()
        typer.echo(f"stopped after accepting {listener.accepted} messages")

    # The event loop of `mailgate serve` too (uvicorn picks uvloop).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
