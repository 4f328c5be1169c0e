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
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mailgate.domain.clock import Clock
from mailgate.domain.delivery import Claimed, Journaled, Recorded
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
# Fairness (README "Provider limits, pauses and fairness"): one configuration's lane holds at
# most a quarter of a batch (at least LANE_MIN); a full lane is left out of claims, and the
# mail it holds does not stop the worker from claiming for the others - up to MAX_HELD
# batches in memory in all.
LANE_MIN = 4
MAX_HELD = 4
# A configuration whose connections are all held by other processes (its lane gave its mail
# back to them, ``Dispatcher.busy_elsewhere``): this worker leaves its mail to them this long.
BUSY_ELSEWHERE_S = 1.0
# How often a worker holding mail that waits in lanes looks for pauses other processes began.
PAUSE_RECHECK_S = 1.0
# A worker fed by a trickle claims at most this often, so one claim takes several messages.
CLAIM_SPACING_S = 0.01
# The journal (started marks and results) is written by group commit: each transaction takes
# everything that gathered while the previous one was being written, up to RECORD_BATCH
# results; no waiting for more. A write that fails is repeated, after JOURNAL_RETRY_S
# doubling up to JOURNAL_RETRY_MAX_S: a result is never dropped.
RECORD_BATCH = 1000
JOURNAL_RETRY_S = 0.2
JOURNAL_RETRY_MAX_S = 5.0
# After a drain ran out: how long the journal gets to write what finished.
JOURNAL_FLUSH_S = 5.0


@dataclass(frozen=True)
class DeliverySettings:
    batch: int
    """Messages claimed at a time, and held in flight at most."""
    lease_s: float
    poll_s: float
    """Safety-net poll of an idle worker (new mail wakes it at once)."""
    idle_session_s: float = IDLE_SESSION_S
    drain_s: float = 20.0
    """On shutdown, how long attempts under way may take to finish; then they are stopped
    and handed back (below the 30 s a supervisor waits before SIGKILL)."""
    dead_after_s: float = 15.0
    """A worker whose heartbeat stopped this long ago is dead: its messages are taken over.
    Heartbeats go every fifth of it."""
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
        run_blocking: Callable[..., Awaitable[Any]] = asyncio.to_thread,
        gather_marks: bool = True,
        journal_now: Callable[
            [str, Sequence[str], Sequence[tuple[Claimed, AttemptResult]]], Journaled | None
        ]
        | None = None,
        leaves: Callable[[ResolvedServer], bool] = lambda _server: False,
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
        self.run_blocking = run_blocking
        """How the journal's blocking write runs: in a thread (tests on a hand-driven clock
        run it inline, so that a mark takes no time on the test's timeline)."""
        self.journal_now = journal_now
        """If given: the journal's write tried at once on the event loop first (SQLite, where
        it is a local write: cheaper than the hand-off to a thread and back, which cost more
        CPU than the write); ``None`` from it (the write lock is taken) falls back to
        ``run_blocking``."""
        self.leaves = leaves
        """Configurations whose mail this process gives back if it claimed it before its
        list of them (``skip_servers``, read every ``SKIP_RECHECK_S``) knew them: remote
        output created a moment ago, in a worker process."""
        self.gather_marks = gather_marks
        """A session's started mark waits one turn of the event loop for the marks of the
        sessions whose replies came in with its own, so that one write takes them all
        (tests on a hand-driven clock, whose timeline has no room for that turn: off)."""
        self.batch = settings.batch
        self.lane_budget = max(LANE_MIN, self.batch // 4)
        self._skip: tuple[float, list[int]] = (-SKIP_RECHECK_S, [])
        self._busy_elsewhere: dict[int, float] = {}
        """Configuration -> until when (monotonic) its mail is left to other processes."""
        self.delivered = 0
        self._fresh_loop_state()

    def _fresh_loop_state(self, idle_session_s: float | None = None) -> None:
        # asyncio primitives belong to one event loop; tests call run_once() in new loops.
        self.results: list[tuple[Claimed, AttemptResult]] = []
        self.starts: list[tuple[Claimed, asyncio.Future[bool]]] = []
        self.journal_due = asyncio.Event()
        self._writing = False
        self._failing_since: float | None = None
        self.progress = asyncio.Event()
        self.inflight = 0
        self.by_server: Counter[int] = Counter()
        """Claimed and not yet recorded, per configuration (the lanes' budgets)."""
        self.held: set[str] = set()
        """Ids of claimed messages not yet recorded (their leases are renewed)."""
        self._registered = False
        self.dispatcher = Dispatcher(
            self.open_session,
            self.load_targets,
            self.tokens_for,
            self._finish,
            self._postpone,
            before_send=self._start,
            clock=self.clock,
            sleep=self.sleep,
            max_wait_s=self.settings.lease_s / 2,
            idle_session_s=(
                self.settings.idle_session_s if idle_session_s is None else idle_session_s
            ),
            pauses=self.settings.pauses,
            limits=self.limits,
            holder=self.id,
            leaves=self.leaves,
            on_left=self._reread_skip,
            busy_elsewhere=self._leave_for_a_while,
        )

    # ---- the queue (blocking calls, run in a thread) --------------------------------------

    def _reread_skip(self) -> None:
        self._skip = (-SKIP_RECHECK_S, [])

    def _leave_for_a_while(self, server_id: int) -> None:
        self._busy_until()
        until = time.monotonic() + BUSY_ELSEWHERE_S
        self._busy_elsewhere = {**self._busy_elsewhere, server_id: until}

    def _busy_until(self) -> float | None:
        """On the event loop: forget the moments that are over; when the next one ends."""
        now = time.monotonic()
        self._busy_elsewhere = {s: t for s, t in self._busy_elsewhere.items() if t > now}
        return min(self._busy_elsewhere.values(), default=None)

    def _busy_now(self) -> list[int]:
        """Configurations left to the processes holding their connections, for now (read
        in the claim's thread: the loop replaces the dict, never changes it there)."""
        now = time.monotonic()
        return [sid for sid, until in list(self._busy_elsewhere.items()) if until > now]

    def _skip_servers(self) -> list[int]:
        at, ids = self._skip
        if time.monotonic() - at >= SKIP_RECHECK_S:
            ids = self.skip_servers_of()
            self._skip = (time.monotonic(), ids)
        return [*ids, *self._busy_now()]

    def _only_servers(self) -> list[int] | None:
        if self.only_servers_of is None:
            return None
        at, ids = self._only
        if time.monotonic() - at >= SKIP_RECHECK_S:
            ids = self.only_servers_of()
            self._only = (time.monotonic(), ids)
        busy = self._busy_now()
        return [sid for sid in ids if sid not in busy] if busy else ids

    @property
    def serves_nothing(self) -> bool:
        """True for a worker restricted to configurations of which none existed when last
        looked at, less than ``SKIP_RECHECK_S`` ago: a wake-up has nothing for it."""
        at, ids = self._only
        return (
            self.only_servers_of is not None and not ids and time.monotonic() - at < SKIP_RECHECK_S
        )

    def _full_lanes(self) -> set[int]:
        return {sid for sid, n in self.by_server.items() if n >= self.lane_budget}

    def _claim(
        self, limit: int, full: set[int], held: dict[int, int], *, fair: bool = True
    ) -> list[Claimed]:
        """Claim for lanes with room: none of ``full`` lanes' mail, and at most a lane's
        budget of any configuration (less what its lane ``held`` already). ``fair`` False:
        a whole batch as it comes (``run_once`` drains everything anyway)."""
        only = self._only_servers()
        budget = self.lane_budget if fair else None
        if only is not None:
            only = [sid for sid in only if sid not in full]
            return self.queue.claim(self.id, limit, only_servers=only, per_server=budget, held=held)
        skip = [*self._skip_servers(), *full]
        return self.queue.claim(self.id, limit, skip_servers=skip, per_server=budget, held=held)

    def _claim_now(self, limit: int) -> Awaitable[list[Claimed]]:
        return asyncio.to_thread(self._claim, limit, self._full_lanes(), dict(self.by_server))

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
        helpers = [asyncio.create_task(self._journal()), asyncio.create_task(self._heartbeat())]
        try:
            while True:
                claimed = await asyncio.to_thread(self._claim, self.batch, set(), {}, fair=False)
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
            asyncio.create_task(self._journal()),
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
            drained = await self._drain(self.settings.drain_s)
            if not drained:
                await self._interrupt()
            await self.dispatcher.join()
            await _cancel([*helpers, stopper])
            try:
                await asyncio.to_thread(self.queue.leave, self.id)
            except Exception:
                log.warning("unregistering the worker failed (its heartbeat will run out)")
            log.info("worker %s stopped", self.id)

    async def _drain(self, limit_s: float) -> bool:
        """Wait for the attempts under way to finish and be recorded, up to ``limit_s``;
        False if some are still out then."""
        deadline = time.monotonic() + limit_s
        while self.inflight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), timeout=min(1.0, left))
            except TimeoutError:
                if not self.dispatcher.tasks and not (self.starts or self.results):
                    break
        return True

    async def _flush_journal(self, limit_s: float) -> None:
        """Wait, up to ``limit_s``, until the journal has written what the stopped sessions
        finished (results, started marks). Not ``_drain``: the messages whose sessions were
        stopped stay in flight until they are handed back, so it waited its whole second
        steps, and all of ``limit_s`` while the journal had nothing left to write."""
        deadline = time.monotonic() + limit_s
        while (self.starts or self.results or self._writing) and time.monotonic() < deadline:
            self.journal_due.set()
            self.progress.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), timeout=0.05)

    async def _interrupt(self) -> None:
        """The drain ran out (a server that does not answer): stop the sessions, write what
        is finished, and hand back the rest - open attempts as possibly delivered, the others
        ready again - so that another worker can go on at once."""
        log.warning(
            "the shutdown drain of %.0f s ran out with %d messages in flight; handing them back",
            self.settings.drain_s,
            self.inflight,
        )
        for task in list(self.dispatcher.tasks):
            task.cancel()
        await asyncio.gather(*list(self.dispatcher.tasks), return_exceptions=True)
        await self._flush_journal(JOURNAL_FLUSH_S)
        try:
            handed = await asyncio.to_thread(self.queue.abandon, self.id)
        except Exception:
            log.exception("handing messages back failed (their leases will run out)")
            return
        log.info("handed back %d messages", handed)

    async def _claim_loop(
        self, stop: asyncio.Event, wake: asyncio.Event, stopper: asyncio.Task[bool]
    ) -> None:
        low_water = max(1, self.batch // 2)
        poll = self.settings.poll_s
        last_claim_at, last_claimed = 0.0, 0
        while not stop.is_set():
            self.progress.clear()
            # Mail held by full lanes (a slow, hanging or rate-limited configuration) does not
            # count: the worker goes on claiming other configurations' mail beside it.
            full = self._full_lanes()
            active = self.inflight - sum(self.by_server[sid] for sid in full)
            room = min(self.batch - active, MAX_HELD * self.batch - self.inflight)
            if active < low_water and room > 0:
                since = time.monotonic() - last_claim_at
                if 0 < last_claimed < self.batch // 4 and since < CLAIM_SPACING_S:
                    # Mail trickles in (the last claim found a handful): let a few more
                    # arrive, so that one claim transaction takes many instead of each.
                    # A worker that found nothing last time claims at once.
                    await _wait_any([stopper], CLAIM_SPACING_S - since)
                wake.clear()
                try:
                    claimed = await self._claim_now(room)
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
                    busy_until = self._busy_until()
                    if busy_until is not None:
                        # Its mail may still be there when the moment is over.
                        timeout = min(timeout, max(0.01, busy_until - time.monotonic()))
                    if timeout > 0:
                        waiter = asyncio.create_task(wake.wait())
                        await _wait_any([waiter, stopper], timeout)
                        waiter.cancel()
                    continue
            waiters = [asyncio.create_task(self.progress.wait()), asyncio.create_task(wake.wait())]
            await _wait_any([*waiters, stopper], poll)
            for w in waiters:
                w.cancel()

    def _done(self, messages: Iterable[Claimed]) -> None:
        for m in messages:
            if m.server_id is not None:
                self.by_server[m.server_id] -= 1
                if self.by_server[m.server_id] <= 0:
                    del self.by_server[m.server_id]

    async def _dispatch(self, claimed: list[Claimed]) -> None:
        self.by_server.update(m.server_id for m in claimed if m.server_id is not None)
        self.inflight += len(claimed)
        self.held.update(m.id for m in claimed)
        await self.dispatcher.dispatch(claimed)

    # ---- results ---------------------------------------------------------------------------

    async def _start(self, m: Claimed) -> bool:
        """Mark ``m``'s attempt started before it goes out (with whatever else gathered, in
        one write); False if the message was taken away meanwhile (held, cancelled, taken
        over): then it must not be sent. The first session to ask while no write is under
        way writes itself, after one turn of the event loop: the sessions whose replies came
        in with its own add their marks meanwhile, so that one write takes them all (it
        wrote alone at once before, and the others' marks went in a second transaction);
        the marks that come while a write is under way go with the next write."""
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.starts.append((m, started))
        if not self._writing and self.gather_marks:
            await asyncio.sleep(0)
            if started.done():  # another session's write took it
                return started.result()
        if self._writing:
            self.journal_due.set()
        elif not await self._write_journal():
            self.journal_due.set()  # the journal task retries
        return await started

    def _finish(self, m: Claimed, result: AttemptResult) -> None:
        self.results.append((m, result))
        self.journal_due.set()

    async def _journal(self) -> None:
        """Group commit of started marks and results: one transaction takes all that
        gathered while the last one was written. A failed write is tried again with the
        same items (and what joined meanwhile): results are never dropped; while the
        database refuses, the sessions wait for their marks and nothing new goes out."""
        delay = JOURNAL_RETRY_S
        while True:
            await self.journal_due.wait()
            self.journal_due.clear()
            while (self.starts or self.results) and not self._writing:
                if await self._write_journal():
                    delay = JOURNAL_RETRY_S
                    continue
                await asyncio.sleep(delay)
                delay = min(delay * 2, JOURNAL_RETRY_MAX_S)

    async def _write_journal(self) -> bool:
        """One journal transaction with everything pending; False if it failed (the items
        are put back for the next try)."""
        self._writing = True
        starts, self.starts = self.starts, []
        items, self.results = self.results[:RECORD_BATCH], self.results[RECORD_BATCH:]
        try:
            ids = [m.id for m, _f in starts]
            done = self.journal_now(self.id, ids, items) if self.journal_now else None
            if done is None:
                done = await self.run_blocking(self.queue.journal, self.id, ids, items)
        except Exception:
            self.starts[:0] = starts
            self.results[:0] = items
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.exception(
                    "writing %d results and %d started marks failed; retrying until it works "
                    "(nothing is dropped)",
                    len(items),
                    len(starts),
                )
            return False
        finally:
            self._writing = False
        if self._failing_since is not None:
            log.warning(
                "writing results works again after %.1f s",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        for m, future in starts:
            ok = m.id in done.started
            if not ok:
                # Taken away before it started: nothing to record.
                self.held.discard(m.id)
                self._done([m])
                self.inflight -= 1
            if not future.done():
                future.set_result(ok)
        self._observe(done.recorded)
        self.held.difference_update(m.id for m, _r in items)
        self._done(m for m, _r in items)
        self.inflight -= len(items)
        self.progress.set()
        if self.starts or self.results:
            self.journal_due.set()
        return True

    def observe(self, recorded: list[Recorded]) -> None:
        """Count recorded attempts (the journal's, and those a claim closed for dead
        workers)."""
        self._observe(recorded)

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
            self._done(m for m, _a, _r in items)
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
        """Every ``dead_after_s / 5``: this worker's heartbeat (taking over the messages of
        dead workers on the way); every ``lease_s / 3``: the leases of the messages it
        holds, and its connection slots."""
        beat_every = self.settings.dead_after_s / 5
        lease_every = self.settings.lease_s / 3
        dead_after = timedelta(seconds=self.settings.dead_after_s)
        next_lease = time.monotonic() + lease_every
        while True:
            try:
                beat = await asyncio.to_thread(self.queue.heartbeat, self.id, dead_after)
            except Exception:
                log.warning("the heartbeat failed; trying again", exc_info=True)
            else:
                if beat.dead:
                    log.warning(
                        "took over the messages of %d stopped worker(s) (%s): %d ready again",
                        len(beat.dead),
                        ", ".join(beat.dead),
                        beat.released,
                    )
                if beat.presumed_dead and self._registered:
                    # Another worker took this one for dead and took its messages over: the
                    # ones waiting in lanes are no longer its own (their marks would fail).
                    dropped = self.dispatcher.take_waiting()
                    self.held.difference_update(m.id for m in dropped)
                    self._done(dropped)
                    self.inflight -= len(dropped)
                    self.progress.set()
                    log.warning(
                        "this worker was taken for dead (no heartbeat for %.0f s); dropped "
                        "%d messages it had not started",
                        self.settings.dead_after_s,
                        len(dropped),
                    )
                self._registered = True
            await asyncio.sleep(beat_every)
            if time.monotonic() < next_lease:
                continue
            next_lease = time.monotonic() + lease_every
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
