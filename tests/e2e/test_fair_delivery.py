"""Fair delivery (README "Provider limits, pauses and fairness"): one tenant's server that
greets and then never answers costs that tenant only. A real worker loop, real aiosmtpd
servers, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from tests.e2e.outbox_helpers import rig
from tests.smtp_fixtures import SmtpServers

from mailgate.entrypoints.worker import Worker


def test_a_tarpit_server_does_not_delay_another_tenants_mail(
    tmp_path: Path, database_url: str, smtp_servers: SmtpServers
) -> None:
    tarpit = smtp_servers.start()
    tarpit.fail("EHLO", "hang", times=None)  # greets, then never answers
    healthy = smtp_servers.start()
    # The numbers: batch 20; each hanging command costs 6 s here. At the end the
    # worker stops after a 0.5 s drain instead of waiting out the tarpit's sessions.
    settings = {"worker_batch": 20, "worker_poll_s": 0.2, "shutdown_drain_s": 0.5}
    with rig(tmp_path, database_url, **settings) as r:
        r.add_server(tarpit.config("TARPIT", timeouts={"connect_s": 2, "command_s": 6}))
        r.api.make_tenant(r.admin, "other")
        r.add_server(healthy.config("HEALTHY"), tenant="other")
        for i in range(40):
            r.send(server="TARPIT", to=[f"t{i}@example.org"], text="x")

        stop_flag = threading.Event()

        async def run_worker() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(Worker(r.c, worker_id="fair").run(stop))
            while not stop_flag.is_set():
                await asyncio.sleep(0.05)
            stop.set()
            await task

        thread = threading.Thread(target=lambda: asyncio.run(run_worker()))
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while sum(1 for c in tarpit.commands if c.startswith("EHLO")) < 3:
                assert time.monotonic() < deadline, "the tarpit's sessions did not start"
                time.sleep(0.02)
            sent_at = time.monotonic()
            r.send(tenant="other", to=["x@example.org"], text="urgent")
            healthy.wait_for(1, timeout=10)
            waited = time.monotonic() - sent_at
        finally:
            stop_flag.set()
            thread.join(timeout=60)
        # Before lanes had budgets, the worker held a batch of the tarpit's mail and claimed
        # nothing else until its sessions timed out (6 s here, minutes at the defaults).
        assert waited < 3.0, f"the healthy tenant's message waited {waited:.1f} s"
        print(f"\nhealthy tenant beside a tarpit: delivered after {waited:.2f} s")
