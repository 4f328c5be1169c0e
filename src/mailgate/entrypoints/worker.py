"""The delivery worker process part: wires ``services.delivery`` to the container and runs it.

What a worker does is in ``services/delivery/``; here it gets its queue, transport and
wake-up sources (in-process, PostgreSQL NOTIFY, the SQLite data directory's socket).
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import timedelta

from mailgate.adapters.db.limits import SqlDeliveryLimits
from mailgate.adapters.db.notify import listen_postgres
from mailgate.adapters.db.queue import SqlDeliveryQueue
from mailgate.bootstrap import Container
from mailgate.domain.messages import RetryPolicy
from mailgate.domain.pauses import PausePolicy
from mailgate.ports import SessionOpener
from mailgate.services.delivery.service import DeliveryService, DeliverySettings
from mailgate.services.delivery.targets import target_loader

# The remote-output worker of an API process wakes at most this often for new mail.
REMOTE_WAKE_SPACING_S = 0.02


def default_worker_id(n: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{n}"


class Worker:
    """One delivery worker of this process."""

    def __init__(
        self,
        c: Container,
        open_session: SessionOpener | None = None,
        *,
        worker_id: str | None = None,
        batch: int | None = None,
        idle_session_s: float | None = None,
        remote_only: bool = False,
    ) -> None:
        s = c.settings
        self.c = c
        self.remote_only = remote_only
        pauses = PausePolicy(
            quota=timedelta(seconds=s.pause_quota_s),
            backoff=timedelta(seconds=s.pause_backoff_s),
            cap=timedelta(seconds=max(s.pause_quota_s, s.pause_backoff_s)),
        )
        self.store = SqlDeliveryQueue(
            c.sessions,
            c.clock,
            timedelta(seconds=s.lease_s),
            RetryPolicy(
                base=timedelta(seconds=s.retry_base_s),
                cap=timedelta(seconds=s.retry_cap_s),
                possibly_delivered_after=timedelta(seconds=s.possibly_delivered_retry_s),
                max_age=timedelta(seconds=s.retry_max_age_s),
            ),
            pauses=pauses,
        )
        self.service = DeliveryService(
            worker_id or default_worker_id(),
            self.store,
            open_session or c.transports.open,
            target_loader(c.sessions, c.servers),
            c.token_provider_for,
            self._skip_servers,
            c.metrics,
            DeliverySettings(
                batch=batch or s.worker_batch,
                lease_s=s.lease_s,
                poll_s=s.worker_poll_s,
                idle_session_s=s.idle_session_s if idle_session_s is None else idle_session_s,
                dead_after_s=s.worker_dead_after_s,
                drain_s=s.shutdown_drain_s,
                pauses=pauses,
            ),
            clock=c.clock,
            only_servers=self._own_remote_servers if remote_only else None,
            limits=SqlDeliveryLimits(c.engine, c.clock, timedelta(seconds=s.lease_s)),
            # SQLite: the journal is a local write, tried on the event loop first.
            journal_now=self.store.journal_if_free if c.engine.dialect.name == "sqlite" else None,
            # A process without agents (a worker process) leaves remote output to serve,
            # also the mail of a configuration made remote since it last looked.
            leaves=lambda server: server.remote_client is not None and not c.hub.accepting,
        )
        # Attempts a claim closes for dead workers count like any other (possibly delivered).
        self.store.on_settled = self.service.observe

    @property
    def id(self) -> str:
        return self.service.id

    @property
    def delivered(self) -> int:
        return self.service.delivered

    def _skip_servers(self) -> list[int]:
        """Remote-output configurations whose agent this process cannot reach: their mail is
        left to the API process the agent is connected to."""
        with self.c.sessions() as db:
            return self.c.remote_clients.servers_for_other_processes(db, self.c.hub)

    def _own_remote_servers(self) -> list[int]:
        """The remote-output configurations this API process delivers (its agents')."""
        with self.c.sessions() as db:
            return self.c.remote_clients.servers_for_this_process(db, self.c.hub)

    async def run_once(self) -> int:
        """Claim and attempt everything due now; return the number of attempts recorded."""
        return await self.service.run_once()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then finish what is in flight and give back the rest."""
        wake = self.c.wakeup.register()
        signal = wake
        forward = None
        if self.remote_only:
            # The API process's remote-output worker hears every submission of the process;
            # it wakes for them only when there is remote output at all, and at most every
            # REMOTE_WAKE_SPACING_S, so that its claims cost the API next to nothing.
            signal = asyncio.Event()
            forward = asyncio.create_task(self._forward_wakes(wake, signal))
        listener = None
        if self.c.engine.dialect.name == "postgresql":
            listener = asyncio.create_task(
                listen_postgres(self.c.settings.effective_database_url, wake, stop)
            )
        stop_listening = None
        if self.c.wakeup.local is not None:
            stop_listening = self.c.wakeup.local.listen(asyncio.get_running_loop(), wake.set)
        try:
            await self.service.run(stop, signal)
        finally:
            for task in (listener, forward):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            self.c.wakeup.unregister(wake)
            if stop_listening is not None:
                stop_listening()

    async def _forward_wakes(self, heard: asyncio.Event, wake: asyncio.Event) -> None:
        while True:
            await heard.wait()
            heard.clear()
            if not self.service.serves_nothing:
                wake.set()
                await asyncio.sleep(REMOTE_WAKE_SPACING_S)
