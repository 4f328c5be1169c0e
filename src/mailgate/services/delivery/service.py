"""The delivery use case: claim -> dispatch to lanes -> record, until told to stop.

One asyncio task claims batches from the queue and hands them to the ``Dispatcher``; a
recorder task writes results in batches; a heartbeat renews the leases of messages still
held. ``run_once()`` does one full cycle (for tests, on an injected clock); ``run()`` loops
until ``stop`` is set, then gives back what it has not started and finishes what it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailgate.domain.clock import Clock
from mailgate.domain.delivery import Claimed, Recorded
from mailgate.domain.messages import AttemptResult, Status
from mailgate.domain.pauses import PausePolicy
from mailgate.ports import (
    DeliveryLimits,
    DeliveryObserver,
    DeliveryQueue,
    SessionOpener,
    TokenProvider,
)
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.delivery.dispatcher import Dispatcher, Postponed, TargetLoader
from mailgate.services.delivery.policy import LocalLimits

log = logging.getLogger("mailgate.worker")

# How long an open session waits for more mail before it says QUIT; well below the
# 5 minutes servers wait for a command (RFC 5321 4.5.3.2.7).
IDLE_SESSION_S = 10.0
# How often the list of configurations left to other processes is read again.
SKIP_RECHECK_S = 2.0
# How often a worker holding mail that waits in lanes looks for pauses other processes began.
PAUSE_RECHECK_S = 1.0
# A worker fed by a trickle claims at most this often, so one claim takes several messages.
CLAIM_SPACING_S = 0.01
# Results are written in one transaction per batch: up to RECORD_BATCH, and while more
# messages are in flight the recorder waits up to RECORD_LINGER_S for a quarter of a claim
# batch to gather.
RECORD_BATCH = 1000
RECORD_LINGER_S = 0.02


@dataclass(frozen=True)
class DeliverySettings:
    batch: int
    """Messages claimed at a time, and held in flight at most."""
    lease_s: float
    poll_s: float
    """Safety-net poll of an idle worker (new mail wakes it at once)."""
    idle_session_s: float = IDLE_SESSION_S
    pauses: PausePolicy = field(default_factory=PausePolicy)


class DeliveryService:
    def __init__(
        self,
        worker_id: str,
        queue: DeliveryQueue,
        open_session: SessionOpener,
        load_targets: TargetLoader,
        tokens_for: Callable[[ResolvedServer], TokenProvider | None],
        skip_servers: Callable[[], list[int]],
        observer: DeliveryObserver,
        settings: DeliverySettings,
        *,
        clock: Clock,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        only_servers: Callable[[], list[int]] | None = None,
        limits: DeliveryLimits | None = None,
    ) -> None:
        self.id = worker_id
        self.limits: DeliveryLimits = limits or LocalLimits(clock)
        """Limits of every process together (the database's), or of this one (in memory)."""
        self.queue = queue
        self.open_session = open_session
        self.load_targets = load_targets
        self.tokens_for = tokens_for
        self.skip_servers_of = skip_servers
        """Configurations whose mail this process must leave to others (remote output)."""
        self.only_servers_of = only_servers
        """If given: the only configurations whose mail this worker takes (the remote-output
        worker of an API process)."""
        self._only: tuple[float, list[int]] = (-SKIP_RECHECK_S, [])
        self.observer = observer
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.batch = settings.batch
        self._record_min = max(1, self.batch // 4)
        self._skip: tuple[float, list[int]] = (-SKIP_RECHECK_S, [])
        self.delivered = 0
        self._fresh_loop_state()

    def _fresh_loop_state(self, idle_session_s: float | None = None) -> None:
        # asyncio primitives belong to one event loop; tests call run_once() in new loops.
        self.results: asyncio.Queue[tuple[Claimed, AttemptResult]] = asyncio.Queue()
        self.batch_ready = asyncio.Event()
        self.progress = asyncio.Event()
        self.inflight = 0
        self.held: set[str] = set()
        """Ids of claimed messages not yet recorded (their leases are renewed)."""
        self.dispatcher = Dispatcher(
            self.open_session,
            self.load_targets,
            self.tokens_for,
            self._finish,
            self._postpone,
            clock=self.clock,
            sleep=self.sleep,
            max_wait_s=self.settings.lease_s / 2,
            idle_session_s=(
                self.settings.idle_session_s if idle_session_s is None else idle_session_s
            ),
            pauses=self.settings.pauses,
            limits=self.limits,
            holder=self.id,
        )

    # ---- the queue (blocking calls, run in a thread) --------------------------------------

    def _skip_servers(self) -> list[int]:
        at, ids = self._skip
        if time.monotonic() - at >= SKIP_RECHECK_S:
            ids = self.skip_servers_of()
            self._skip = (time.monotonic(), ids)
        return ids

    def _only_servers(self) -> list[int] | None:
        if self.only_servers_of is None:
            return None
        at, ids = self._only
        if time.monotonic() - at >= SKIP_RECHECK_S:
            ids = self.only_servers_of()
            self._only = (time.monotonic(), ids)
        return ids

    @property
    def serves_nothing(self) -> bool:
        """True for a worker restricted to configurations of which none existed when last
        looked at, less than ``SKIP_RECHECK_S`` ago: a wake-up has nothing for it."""
        at, ids = self._only
        return (
            self.only_servers_of is not None and not ids and time.monotonic() - at < SKIP_RECHECK_S
        )

    def _claim(self, limit: int) -> list[Claimed]:
        only = self._only_servers()
        if only is not None:
            return self.queue.claim(self.id, limit, only_servers=only)
        return self.queue.claim(self.id, limit, skip_servers=self._skip_servers())

    def _next_due(self) -> datetime | None:
        only = self._only_servers()
        if only is not None:
            return self.queue.next_due(only_servers=only)
        return self.queue.next_due(skip_servers=self._skip_servers())

    # ---- entry points ----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim and attempt everything due now; return the number of attempts recorded."""
        self._fresh_loop_state(idle_session_s=0.0)
        total = 0
        helpers = [asyncio.create_task(self._recorder()), asyncio.create_task(self._heartbeat())]
        try:
            while True:
                claimed = await asyncio.to_thread(self._claim, self.batch)
                if not claimed:
                    break
                await self._dispatch(claimed)
                while self.inflight:
                    self.progress.clear()
                    await self.progress.wait()
                total += len(claimed)
        finally:
            await _cancel(helpers)
            await self.dispatcher.join()
        return total

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; ``wake`` is set when new mail may be ready."""
        self._fresh_loop_state()
        helpers = [
            asyncio.create_task(self._recorder()),
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._watch_pauses()),
        ]
        stopper = asyncio.create_task(stop.wait())
        log.info("worker %s started", self.id)
        try:
            await self._claim_loop(stop, wake, stopper)
        finally:
            self.dispatcher.stopping = True
            await self._give_back()
            while self.inflight:
                self.progress.clear()
                try:
                    await asyncio.wait_for(self.progress.wait(), timeout=1.0)
                except TimeoutError:
                    if not self.dispatcher.tasks:
                        break
            await self.dispatcher.join()
            await _cancel([*helpers, stopper])
            log.info("worker %s stopped", self.id)

    async def _claim_loop(
        self, stop: asyncio.Event, wake: asyncio.Event, stopper: asyncio.Task[bool]
    ) -> None:
        low_water = max(1, self.batch // 2)
        poll = self.settings.poll_s
        last_claim_at, last_claimed = 0.0, 0
        while not stop.is_set():
            self.progress.clear()
            if self.inflight < low_water:
                since = time.monotonic() - last_claim_at
                if 0 < last_claimed < self.batch // 4 and since < CLAIM_SPACING_S:
                    # Mail trickles in (the last claim found a handful): let a few more
                    # arrive, so that one claim transaction takes many instead of each.
                    # A worker that found nothing last time claims at once.
                    await _wait_any([stopper], CLAIM_SPACING_S - since)
                wake.clear()
                try:
                    claimed = await asyncio.to_thread(self._claim, self.batch - self.inflight)
                except Exception:
                    log.exception("claiming failed; retrying shortly")
                    claimed = []
                    await _wait_any([stopper], 1.0)
                last_claim_at, last_claimed = time.monotonic(), len(claimed)
                if claimed:
                    await self._dispatch(claimed)
                    continue
                if self.inflight == 0:
                    timeout = poll
                    due = await asyncio.to_thread(self._next_due)
                    if due is not None:
                        timeout = min(poll, max(0.0, (due - self.clock()).total_seconds()))
                    if timeout > 0:
                        waiter = asyncio.create_task(wake.wait())
                        await _wait_any([waiter, stopper], timeout)
                        waiter.cancel()
                    continue
            waiters = [asyncio.create_task(self.progress.wait()), asyncio.create_task(wake.wait())]
            await _wait_any([*waiters, stopper], poll)
            for w in waiters:
                w.cancel()

    async def _dispatch(self, claimed: list[Claimed]) -> None:
        self.inflight += len(claimed)
        self.held.update(m.id for m in claimed)
        await self.dispatcher.dispatch(claimed)

    # ---- results ---------------------------------------------------------------------------

    def _finish(self, m: Claimed, result: AttemptResult) -> None:
        self.results.put_nowait((m, result))
        if self.results.qsize() >= self._record_min:
            self.batch_ready.set()

    async def _recorder(self) -> None:
        while True:
            first = await self.results.get()
            gathered = self.results.qsize() + 1
            if gathered < self._record_min and self.inflight > gathered:
                # More results are on their way: gather a few before paying for a transaction
                # (one per ~50 results costs a fraction of one per handful), but never hold
                # them for long.
                self.batch_ready.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.batch_ready.wait(), RECORD_LINGER_S)
            items = [first]
            while not self.results.empty() and len(items) < RECORD_BATCH:
                items.append(self.results.get_nowait())
            try:
                recorded = await asyncio.to_thread(self.queue.record, self.id, items)
            except Exception:
                log.exception("recording %d results failed; their leases will expire", len(items))
                recorded = []
            self._observe(recorded)
            self.held.difference_update(m.id for m, _r in items)
            self.inflight -= len(items)
            self.progress.set()

    def _observe(self, recorded: list[Recorded]) -> None:
        now = self.clock()
        for r in recorded:
            self.observer.observe_attempt(
                r.result.code,
                r.decision.status,
                r.message.created_at,
                now,
                possibly_delivered=r.result.possibly_delivered,
            )
            if r.decision.status is Status.SENT:
                self.delivered += 1

    async def _postpone(self, items: list[Postponed]) -> None:
        now = self.clock()
        rows = [(m, now + timedelta(seconds=after), reason) for m, after, reason in items]
        try:
            await asyncio.to_thread(self.queue.postpone, self.id, rows)
        finally:
            self.held.difference_update(m.id for m, _a, _r in items)
            self.inflight -= len(items)
            self.progress.set()

    async def _give_back(self) -> None:
        waiting = self.dispatcher.take_waiting()
        if waiting:
            log.info("giving back %d messages not yet started", len(waiting))
            await self._postpone([(m, 0.0, None) for m in waiting])

    async def _watch_pauses(self) -> None:
        """Stop lanes whose configuration another process paused, so that the mail they hold
        is not tried against a provider that already said "wait"."""
        while True:
            await asyncio.sleep(PAUSE_RECHECK_S)
            if not any(lane.queue for lane in self.dispatcher.lanes.values()):
                continue
            try:
                paused = await asyncio.to_thread(self.queue.paused_servers)
            except Exception:
                log.warning("reading the configurations' pauses failed", exc_info=True)
                continue
            self.dispatcher.hold(paused)

    async def _heartbeat(self) -> None:
        every = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(every)
            held = list(self.dispatcher.held_connections)
            if held:
                try:
                    await asyncio.to_thread(self.limits.renew_connections, self.id, held)
                except Exception:
                    log.exception("renewing connection slots failed")
            if self.held:
                try:
                    await asyncio.to_thread(self.queue.extend, self.id, list(self.held))
                except Exception:
                    log.exception("renewing leases failed")


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_any(tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
