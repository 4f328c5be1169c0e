"""The delivery worker: claim -> SMTP transport -> record, around ``services.delivery``.

One asyncio task claims batches and hands each message to the lane of its e-mail server. A
lane runs up to ``limits.max_connections`` SMTP sessions that take messages one after the
other on the same connection, paced by ``limits.messages_per_minute``. A recorder task
writes results in batches. ``run_once()`` does one full cycle on the container's clock, for
tests; ``run()`` loops until ``stop`` is set (SIGTERM), then gives back what it has not
started and finishes what it has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from mailgate.adapters.db.notify import listen_postgres
from mailgate.adapters.db.tables import EmailServer
from mailgate.bootstrap import Container
from mailgate.domain.messages import AttemptResult, Outcome, RetryPolicy
from mailgate.ports import DeliverySession, SessionFailed, SessionOpener, TokenProvider
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.delivery import Claimed, DeliveryStore, Recorded

log = logging.getLogger("mailgate.worker")

# How long an open SMTP session waits for more mail before it says QUIT; well below the
# 5 minutes servers wait for a command (RFC 5321 4.5.3.2.7).
IDLE_SESSION_S = 10.0
OAUTH_RECHECK = timedelta(minutes=1)
SKIP_RECHECK_S = 2.0
CLAIM_SPACING_S = 0.01
# Results are written in one transaction per batch: up to RECORD_BATCH, and while more
# messages are in flight the recorder waits up to RECORD_LINGER_S for a quarter of a claim
# batch to gather.
RECORD_BATCH = 1000
RECORD_LINGER_S = 0.02


def default_worker_id(n: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{n}"


@dataclass
class _Lane:
    """The messages of one e-mail server and the sessions that send them."""

    server: ResolvedServer | None
    tokens: TokenProvider | None
    max_connections: int
    spacing_s: float
    queue: deque[tuple[Claimed, float]] = field(default_factory=deque)
    sessions: int = 0
    idle: int = 0
    oauth2_state: str | None = None
    next_slot: float = 0.0
    more: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    def __init__(
        self,
        c: Container,
        open_session: SessionOpener | None = None,
        *,
        worker_id: str | None = None,
        batch: int | None = None,
        idle_session_s: float = IDLE_SESSION_S,
    ) -> None:
        s = c.settings
        self.c = c
        self.id = worker_id or default_worker_id()
        self.batch = batch or s.worker_batch
        self.idle_session_s = idle_session_s
        self.open_session = open_session or c.open_session
        self.store = DeliveryStore(
            c.sessions,
            c.clock,
            timedelta(seconds=s.lease_s),
            RetryPolicy(
                base=timedelta(seconds=s.retry_base_s),
                cap=timedelta(seconds=s.retry_cap_s),
                max_age=timedelta(seconds=s.retry_max_age_s),
            ),
        )
        self._skip: tuple[float, list[int]] = (-SKIP_RECHECK_S, [])
        self.lanes: dict[int | None, _Lane] = {}
        self.inflight = 0
        self.results: asyncio.Queue[tuple[Claimed, AttemptResult]] = asyncio.Queue()
        self._record_min = max(1, self.batch // 4)
        self.batch_ready = asyncio.Event()
        self.progress = asyncio.Event()
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.held: set[str] = set()
        """Ids of claimed messages not yet recorded (their leases are renewed)."""

    # ---- claiming (in a thread) -------------------------------------------------------------

    def _skip_servers(self) -> list[int]:
        """Remote-output servers whose agent this process cannot reach (rechecked every few
        seconds): their mail is left to the API process the agent is connected to."""
        at, ids = self._skip
        if time.monotonic() - at >= SKIP_RECHECK_S:
            with self.c.sessions() as db:
                ids = self.c.remote_clients.servers_for_other_processes(db, self.c.hub)
            self._skip = (time.monotonic(), ids)
        return ids

    def _claim(self, limit: int) -> list[Claimed]:
        return self.store.claim(self.id, limit, skip_servers=self._skip_servers())

    def _next_due(self) -> datetime | None:
        return self.store.next_due(skip_servers=self._skip_servers())

    # ---- entry points ----------------------------------------------------------------------

    def _fresh_loop_state(self) -> None:
        # asyncio primitives belong to one event loop; tests call run_once() in new loops.
        self.results = asyncio.Queue()
        self.batch_ready = asyncio.Event()
        self.progress = asyncio.Event()
        self.lanes = {}
        self.stopping = False
        self.held = set()

    async def run_once(self) -> int:
        """Claim and attempt everything due now; return the number of attempts recorded."""
        self._fresh_loop_state()
        total = 0
        idle = self.idle_session_s
        self.idle_session_s = 0.0
        recorder = asyncio.create_task(self._recorder())
        heartbeat = asyncio.create_task(self._heartbeat())
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
            recorder.cancel()
            heartbeat.cancel()
            await asyncio.gather(recorder, heartbeat, return_exceptions=True)
            await self._join_lanes()
            self.idle_session_s = idle
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; then finish what is in flight and give back the rest."""
        self._fresh_loop_state()
        wake = self.c.wakeup.register()
        helpers = [asyncio.create_task(self._recorder()), asyncio.create_task(self._heartbeat())]
        if self.c.engine.dialect.name == "postgresql":
            helpers.append(
                asyncio.create_task(
                    listen_postgres(self.c.settings.effective_database_url, wake, stop)
                )
            )
        stop_listening = None
        if self.c.wakeup.local is not None:
            stop_listening = self.c.wakeup.local.listen(asyncio.get_running_loop(), wake.set)
        stopper = asyncio.create_task(stop.wait())
        log.info("worker %s started", self.id)
        try:
            await self._claim_loop(stop, wake, stopper)
        finally:
            self.stopping = True
            await self._give_back()
            while self.inflight:
                self.progress.clear()
                try:
                    await asyncio.wait_for(self.progress.wait(), timeout=1.0)
                except TimeoutError:
                    if not self.tasks:
                        break
            await self._join_lanes()
            for task in [*helpers, stopper]:
                task.cancel()
            await asyncio.gather(*helpers, stopper, return_exceptions=True)
            self.c.wakeup.unregister(wake)
            if stop_listening is not None:
                stop_listening()
            log.info("worker %s stopped", self.id)

    async def _claim_loop(
        self, stop: asyncio.Event, wake: asyncio.Event, stopper: asyncio.Task[bool]
    ) -> None:
        low_water = max(1, self.batch // 2)
        poll = self.c.settings.worker_poll_s
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
                        timeout = min(poll, max(0.0, (due - self.c.clock()).total_seconds()))
                    if timeout > 0:
                        waiter = asyncio.create_task(wake.wait())
                        await _wait_any([waiter, stopper], timeout)
                        waiter.cancel()
                    continue
            waiters = [asyncio.create_task(self.progress.wait()), asyncio.create_task(wake.wait())]
            await _wait_any([*waiters, stopper], poll)
            for w in waiters:
                w.cancel()

    # ---- lanes -----------------------------------------------------------------------------

    async def _dispatch(self, claimed: list[Claimed]) -> None:
        self.inflight += len(claimed)
        self.held.update(m.id for m in claimed)
        # (Re)read the configuration of servers without an active session: it may have been
        # edited, or its OAuth2 state may have changed.
        server_ids = {
            m.server_id
            for m in claimed
            if m.server_id not in self.lanes or self.lanes[m.server_id].sessions == 0
        }
        if server_ids:
            fresh = await asyncio.to_thread(self._load_servers, server_ids)
            for sid, lane in fresh.items():
                old = self.lanes.get(sid)
                if old is None:
                    self.lanes[sid] = lane
                elif old.sessions == 0 and not old.queue:
                    lane.next_slot = old.next_slot
                    self.lanes[sid] = lane
        postpone: list[tuple[Claimed, float, str | None]] = []
        now = time.monotonic()
        for m in claimed:
            lane = self.lanes[m.server_id]
            if lane.server is None:
                self._finish(m, _fail_now("the e-mail server configuration no longer exists"))
                continue
            wait_reason = self._oauth_wait_reason(m, lane)
            if wait_reason is not None:
                postpone.append((m, OAUTH_RECHECK.total_seconds(), wait_reason))
                continue
            slot = now
            if lane.spacing_s:
                slot = max(now, lane.next_slot)
                if slot - now > self.c.settings.lease_s / 2:
                    # The rate limit would keep it past its lease: give it back until then.
                    postpone.append((m, slot - now, None))
                    continue
                lane.next_slot = slot + lane.spacing_s
            lane.queue.append((m, slot))
            lane.more.set()
            if lane.sessions < lane.max_connections and len(lane.queue) > lane.idle:
                lane.sessions += 1
                self._spawn(self._session_loop(m.server_id, lane))
        if postpone:
            await self._postpone(postpone)

    def _oauth_wait_reason(self, m: Claimed, lane: _Lane) -> str | None:
        assert lane.server is not None
        if lane.server.config.authentication.method != "oauth2":
            return None
        state = lane.oauth2_state
        # Client credentials need no sign-in: the first token request authorizes them.
        app_only = lane.server.config.authentication.grant == "client_credentials"
        if state != "authorized" and not (app_only and state in (None, "not_authorized")):
            return (
                f"waiting for OAuth2 authorization of e-mail server {m.server_name!r} "
                f"(state: {state or 'not_authorized'}); an administrator must sign in again"
            )
        if lane.tokens is None:
            return (
                f"waiting: no OAuth2 token provider is available for e-mail server "
                f"{m.server_name!r}"
            )
        return None

    def _load_servers(self, server_ids: set[int | None]) -> dict[int | None, _Lane]:
        lanes: dict[int | None, _Lane] = {}
        with self.c.sessions() as db:
            rows = {
                r.id: r
                for r in db.scalars(
                    select(EmailServer).where(EmailServer.id.in_([i for i in server_ids if i]))
                )
            }
            for sid in server_ids:
                row = rows.get(sid) if sid is not None else None
                if row is None:
                    lanes[sid] = _Lane(None, None, 1, 0.0)
                    continue
                resolved = self.c.servers.resolve(row)
                limits = resolved.config.limits
                lanes[sid] = _Lane(
                    resolved,
                    self.c.token_provider_for(resolved),
                    limits.max_connections,
                    60.0 / limits.messages_per_minute if limits.messages_per_minute else 0.0,
                    oauth2_state=row.oauth2_state,
                )
        return lanes

    async def _session_loop(self, server_id: int | None, lane: _Lane) -> None:
        assert lane.server is not None
        session: DeliverySession | None = None
        try:
            while True:
                if not lane.queue:
                    if self.stopping or self.idle_session_s <= 0:
                        break
                    lane.more.clear()
                    lane.idle += 1
                    try:
                        await asyncio.wait_for(lane.more.wait(), self.idle_session_s)
                    except TimeoutError:
                        if not lane.queue:
                            break
                    finally:
                        lane.idle -= 1
                    continue
                m, slot = lane.queue.popleft()
                if session is None or not session.usable:
                    if session is not None:
                        await _close(session)
                        session = None
                    try:
                        session = await self.open_session(lane.server, lane.tokens)
                    except SessionFailed as failed:
                        # Every message waiting for this server would fail the same way.
                        self._finish(m, failed.result)
                        while lane.queue:
                            self._finish(lane.queue.popleft()[0], failed.result)
                        break
                delay = slot - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    result = await session.send(m.mail_from, m.rcpt_to, m.raw)
                except Exception as exc:  # the transport classifies; anything else: retry later
                    log.warning("send of %s failed unexpectedly: %s", m.id, type(exc).__name__)
                    result = AttemptResult(Outcome.TEMPORARY, None, "unexpected error", 0)
                self._finish(m, result)
                if result.outcome is not Outcome.DELIVERED and not session.usable:
                    await _close(session)
                    session = None
        finally:
            lane.sessions -= 1
            if session is not None:
                await _close(session)

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
                recorded = await asyncio.to_thread(self.store.record, self.id, items)
            except Exception:
                log.exception("recording %d results failed; their leases will expire", len(items))
                recorded = []
            self._observe(recorded)
            self.held.difference_update(m.id for m, _r in items)
            self.inflight -= len(items)
            self.progress.set()

    def _observe(self, recorded: list[Recorded]) -> None:
        metrics = self.c.metrics
        now = self.c.clock()
        for r in recorded:
            metrics.observe_attempt(r.result.code, r.decision.status, r.message.created_at, now)
            if r.decision.status.value == "sent":
                self.delivered += 1

    async def _postpone(self, items: list[tuple[Claimed, float, str | None]]) -> None:
        now = self.c.clock()
        rows = [(m, now + timedelta(seconds=after), reason) for m, after, reason in items]
        try:
            await asyncio.to_thread(self.store.postpone, self.id, rows)
        finally:
            self.held.difference_update(m.id for m, _a, _r in items)
            self.inflight -= len(items)
            self.progress.set()

    async def _give_back(self) -> None:
        waiting: list[tuple[Claimed, float, str | None]] = [
            (m, 0.0, None) for lane in self.lanes.values() for m, _slot in lane.queue
        ]
        for lane in self.lanes.values():
            lane.queue.clear()
            lane.more.set()
        if waiting:
            log.info("giving back %d messages not yet started", len(waiting))
            await self._postpone(waiting)

    async def _heartbeat(self) -> None:
        every = self.c.settings.lease_s / 3
        while True:
            await asyncio.sleep(every)
            if self.held:
                try:
                    await asyncio.to_thread(self.store.extend, self.id, list(self.held))
                except Exception:
                    log.exception("renewing leases failed")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _join_lanes(self) -> None:
        for lane in self.lanes.values():
            lane.more.set()
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def _fail_now(text: str) -> AttemptResult:
    return AttemptResult(Outcome.PERMANENT, None, text, 0)


async def _close(session: DeliverySession) -> None:
    try:
        await session.close()
    except Exception:
        log.debug("closing an SMTP session failed", exc_info=True)


async def _wait_any(tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
