"""``mailgate worker``: delivery workers without the API (run many of these on PostgreSQL)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from mailgate.bootstrap import build
from mailgate.config import Settings
from mailgate.entrypoints.cli.common import _logging


def worker(
    workers: Annotated[
        int, typer.Option("--workers", "-n", min=1, max=64, help="Workers in this process.")
    ] = 1,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (127.0.0.1).")
    ] = None,
    stats_every: Annotated[
        float, typer.Option(help="Print a progress line every this many seconds (0: never).")
    ] = 10.0,
    supervised: Annotated[
        bool,
        typer.Option(
            hidden=True,
            help="Started by `mailgate serve`: stop when standard input ends (serve is gone); "
            "no token keeper of its own (serve runs one).",
        ),
    ] = False,
) -> None:
    """Deliver queued mail until SIGTERM or Ctrl-C (run many of these on PostgreSQL)."""
    import signal
    import threading

    # A SIGTERM while starting (before the event loop takes the signals over) stops the
    # worker as soon as it runs, instead of killing it.
    early_stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: early_stop.set())
    import time

    import uvloop

    from mailgate.entrypoints.worker import Worker, default_worker_id

    settings = Settings()
    _logging(settings)
    c = build(settings)
    c.installation.upgrade_schema()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=c.metrics.registry)

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if early_stop.is_set():
            stop.set()
        if supervised:
            _stop_when_stdin_ends(loop, stop)
        pool = [Worker(c, worker_id=default_worker_id(i)) for i in range(workers)]
        tasks = [asyncio.create_task(w.run(stop)) for w in pool]
        # Webhook events go out from every worker process, beside the mail (README
        # "Webhooks"): one dispatcher per process, claiming with leases like the workers.
        dispatcher = c.webhook_dispatcher(default_worker_id(0) + ":webhooks")
        tasks.append(asyncio.create_task(dispatcher.run(stop)))
        typer.echo(f"mailgate worker: {workers} worker(s) delivering; Ctrl-C or SIGTERM stops")
        started, last = time.monotonic(), 0
        while not stop.is_set() and stats_every > 0:
            try:
                await asyncio.wait_for(stop.wait(), stats_every)
            except TimeoutError:
                total = sum(w.delivered for w in pool)
                rate = (total - last) / stats_every
                typer.echo(
                    f"delivered {total} in {time.monotonic() - started:.0f} s ({rate:.1f}/s now)"
                )
                last = total
        await asyncio.gather(*tasks)
        typer.echo(f"stopped after delivering {sum(w.delivered for w in pool)} messages")

    from mailgate.entrypoints.keeper import TokenKeeper

    # Every process that sends keeps OAuth2 tokens alive; the row lock makes one refresh
    # of a configuration happen once however many keepers run.
    keeper = TokenKeeper(c.oauth2.keeper)
    if not supervised:
        keeper.start()
    try:
        # The same event loop as `mailgate serve` (uvicorn picks uvloop): 5-8 % less CPU per
        # message delivered than asyncio's own loop.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main_loop())
    finally:
        keeper.stop()


def _stop_when_stdin_ends(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """`mailgate serve` holds the other end of our standard input: when it ends (serve
    exited, or was killed), stop as on SIGTERM."""
    import os

    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
