"""Fairness rows of the delivery benchmark (bench/README.md, row (f)): row (b) - the worker
draining N pre-queued messages of a healthy configuration - while another configuration of
the same installation has a backlog of N messages that cannot go:

- ``b_beside_paused``: the other configuration is paused (a provider's quota answer) and its
  N messages are due (mail that kept arriving during the pause: the worst case for the
  claims, which must pass over them);
- ``b_beside_tarpit``: the other configuration's server greets and then never answers (each
  session hangs until its command deadline, 5 s here).

Each is reported as a ratio of (b) measured in the same round. ``run.py`` runs them in every
round; alone (no Postfix needed)::

    .venv/bin/python bench/fairness.py [--n 2000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sink import Sink

from mailgate.adapters.db.tables import (
    EmailServer,
    Message,
    MessageContent,
    ServerDelivery,
    Tenant,
)
from mailgate.bootstrap import Container
from mailgate.domain.messages import new_message_id
from mailgate.schemas.email_server import EmailServerIn
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox import Owner, SubmitOptions


class Tarpit:
    """A server that greets and then never answers, in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.writers: list[asyncio.StreamWriter] = []

        async def serve() -> None:
            async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                self.writers.append(writer)
                writer.write(b"220 tarpit ESMTP\r\n")
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(3600)

            server = await asyncio.start_server(hang, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        self.thread = threading.Thread(target=lambda: self._run(serve()), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, coro: Any) -> None:
        asyncio.set_event_loop(self.loop)
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            self.loop.run_until_complete(coro)

    def stop(self) -> None:
        def close() -> None:
            for w in self.writers:
                w.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(close)
        self.thread.join(5)


def queue_other(c: Container, name: str, port: int, n: int) -> int:
    """A second configuration with ``n`` messages due before the healthy ones; its id."""
    from run import BODY, server_config

    with c.session() as db:
        tenant = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert tenant is not None
        body = {
            **server_config(port),
            "name": name,
            "timeouts": {"connect_s": 5, "command_s": 5},
        }
        c.servers.create(db, tenant, EmailServerIn.model_validate(body))
        message = MessageIn.model_validate(
            {"server": name, "to": ["other@example.com"], "subject": "o", "text": BODY}
        )
        first = c.outbox.submitter.submit(
            db, tenant.id, Owner("bench", None), message, SubmitOptions.of(message)
        ).message
        content = db.get(MessageContent, first.id)
        assert content is not None
        template = {col.key: getattr(first, col.key) for col in Message.__table__.columns}
        template["next_attempt_at"] = template["next_attempt_at"] - timedelta(minutes=1)
        raw = content.raw
        server_id = db.scalar(select(EmailServer.id).where(EmailServer.name == name))
        assert server_id is not None
    rows, contents = [], []
    for _ in range(1, n):
        mid = new_message_id()
        rows.append({**template, "id": mid})
        contents.append({"message_id": mid, "raw": raw})
    with c.session() as db:
        db.execute(insert(Message), rows)
        db.execute(insert(MessageContent), contents)
    return int(server_id)


def row_beside(sink: Sink, n: int, other: str) -> float:
    """(b) with another configuration paused or tarpitted beside it; messages per second."""
    from run import container, drain, prequeue, run_loop

    sink.reset()
    tarpit = Tarpit() if other == "tarpit" else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            c = container(Path(tmp), None)
            port = tarpit.port if tarpit is not None else sink.port
            other_id = queue_other(c, "OTHER", port, n)
            if other == "paused":
                with c.session() as db:
                    db.add(
                        ServerDelivery(
                            server_id=other_id,
                            paused_until=c.clock() + timedelta(hours=1),
                            paused_at=c.clock(),
                            pause_kind="quota",
                            pause_reason="bench",
                            pauses=1,
                        )
                    )
            prequeue(c, sink.port, n)
            elapsed = run_loop(drain(c, sink, n))
            c.engine.dispose()
    finally:
        if tarpit is not None:
            tarpit.stop()
    return n / elapsed


def main() -> None:
    from run import row_b

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    sink = Sink()
    rounds: list[dict[str, float]] = []
    try:
        for i in range(args.repeat):
            r = {"b": row_b(sink, args.n, None)}
            r["b_beside_paused"] = row_beside(sink, args.n, "paused")
            r["b_beside_tarpit"] = row_beside(sink, args.n, "tarpit")
            rounds.append(r)
            print(
                f"round {i + 1}: (b) {r['b']:.0f} msg/s, beside a paused configuration "
                f"{r['b_beside_paused']:.0f} ({r['b_beside_paused'] / r['b']:.2f}), beside a "
                f"tarpit {r['b_beside_tarpit']:.0f} ({r['b_beside_tarpit'] / r['b']:.2f})",
                flush=True,
            )
    finally:
        sink.stop()
    for key in ("b_beside_paused", "b_beside_tarpit"):
        ratios = [r[key] / r["b"] for r in rounds]
        print(f"{key}/b: median {statistics.median(ratios):.2f} of {[round(x, 2) for x in ratios]}")


if __name__ == "__main__":
    main()
