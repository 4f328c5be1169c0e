"""Lanes: the claimed messages of each configuration and the sessions that send them.

A lane runs up to ``limits.max_connections`` sessions of the configuration's transport, each
holding one of the configuration's connection slots for the whole installation; each session
takes the lane's messages one after the other on the same connection, at the send slots the
limiter reserved (``limits.messages_per_minute``, ``limits.recipients_per_day``: every process
together, ``ports.DeliveryLimits``). A quota or throttling answer stops the lane (the
configuration pauses, ``domain/pauses.py``). The dispatcher never decides what an outcome
means: it hands every (message, result) to ``finish`` and the service records it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from mailgate.domain.clock import Clock
from mailgate.domain.delivery import Claimed
from mailgate.domain.messages import AttemptResult, Outcome, describe
from mailgate.domain.pauses import PausePolicy, describe_pause
from mailgate.ports import (
    DeliveryLimits,
    DeliverySession,
    SessionFailed,
    SessionOpener,
    TokenProvider,
)
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.delivery.policy import (
    LocalLimits,
    fail_now,
    oauth2_wait_reason,
    open_deadline_s,
    send_deadline_s,
    spacing_s,
    unexpected_error,
)

log = logging.getLogger("mailgate.worker")

# How long mail of an OAuth2 configuration waits before the state is checked again.
OAUTH2_RECHECK_S = 60.0
# A lane that finds every connection slot of its configuration held by other processes waits
# this long for one, then gives its mail back ready at once (other processes are woken: those
# holding the connections send it over sessions already open) and ``busy_elsewhere`` is told
# (the worker leaves that configuration's mail to them for a moment). It waited for an idle
# session elsewhere to close before (10 s and more) and held its mail meanwhile: with two
# worker processes, the tail of a burst waited that long while the other process's open
# sessions sat idle (bench/README.md, row "(c) 2 workers").
CONNECTION_WAIT_S = 0.25
# When the database could not reserve send slots, the mail is given back for this long.
LIMITS_RETRY_S = 5.0


@dataclass(frozen=True)
class Target:
    """A configuration as the dispatcher needs it (``server`` None: it no longer exists)."""

    server: ResolvedServer | None
    oauth2_state: str | None = None


TargetLoader = Callable[[Collection[int | None]], dict[int | None, Target]]
"""Reads configurations by id (blocking: the dispatcher runs it in a thread)."""

Postponed = tuple[Claimed, float, str | None]
"""(message, seconds from now until it is due again, reason shown as its last error)."""


@dataclass
class Lane:
    """The messages of one configuration and the sessions that send them."""

    server: ResolvedServer | None
    tokens: TokenProvider | None
    max_connections: int
    oauth2_state: str | None = None
    queue: deque[tuple[Claimed, float]] = field(default_factory=deque)
    sessions: int = 0
    idle: int = 0
    more: asyncio.Event = field(default_factory=asyncio.Event)
    paused: bool = False
    """The provider answered with a quota or throttling reply: the sessions stop taking
    messages (the database holds the pause for every process; a claim lifts it locally)."""


class Dispatcher:
    def __init__(
        self,
        open_session: SessionOpener,
        load_targets: TargetLoader,
        tokens_for: Callable[[ResolvedServer], TokenProvider | None],
        finish: Callable[[Claimed, AttemptResult], None],
        postpone: Callable[[list[Postponed]], Awaitable[None]],
        *,
        clock: Clock,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_wait_s: float,
        idle_session_s: float,
        pauses: PausePolicy | None = None,
        limits: DeliveryLimits | None = None,
        holder: str = "worker",
        before_send: Callable[[Claimed], Awaitable[bool]] | None = None,
        leaves: Callable[[ResolvedServer], bool] = lambda _server: False,
        on_left: Callable[[], None] = lambda: None,
        busy_elsewhere: Callable[[int], None] = lambda _server_id: None,
    ) -> None:
        self.open_session = open_session
        self.load_targets = load_targets
        self.tokens_for = tokens_for
        self.finish = finish
        self.postpone = postpone
        self.clock = clock
        self.sleep = sleep
        self.max_wait_s = max_wait_s
        """A paced message whose slot is further away is given back to the queue."""
        self.idle_session_s = idle_session_s
        """How long an open session waits for more mail before it closes (0: at once)."""
        self.pauses = pauses or PausePolicy()
        self.limits: DeliveryLimits = limits or LocalLimits(clock)
        """``messages_per_minute``, ``recipients_per_day`` and ``max_connections`` of every
        process together (``adapters/db/limits.py``)."""
        self.holder = holder
        self.held_connections: set[tuple[int, int]] = set()
        """(configuration, slot) of the connection slots this dispatcher's sessions hold."""
        self.before_send = before_send
        """Awaited right before a message goes out (the service marks its attempt started);
        False: the message was taken away meanwhile and is not sent."""
        self.leaves = leaves
        """True for a configuration whose mail this process must leave to another (remote
        output in a worker process): claimed before this process knew, it is given back
        untried, and ``on_left`` is told (the worker reads its list of such configurations
        again)."""
        self.on_left = on_left
        self.busy_elsewhere = busy_elsewhere
        """Told the configuration whose connections are all held by other processes, after
        its lane gave its mail back for them."""
        self.lanes: dict[int | None, Lane] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    def _now(self) -> float:
        return self.clock().timestamp()

    async def dispatch(self, claimed: list[Claimed]) -> None:
        """Queue each message on its lane and start sessions as the lane's limit allows."""
        # (Re)read the configuration of lanes without an active session: it may have been
        # edited, or its OAuth2 state may have changed.
        stale = {
            m.server_id
            for m in claimed
            if m.server_id not in self.lanes or self.lanes[m.server_id].sessions == 0
        }
        if stale:
            targets = await asyncio.to_thread(self.load_targets, stale)
            for sid in stale:
                self._refresh_lane(sid, targets.get(sid, Target(None)))
        postpone: list[Postponed] = []
        by_lane: dict[int | None, list[Claimed]] = {}
        left = False
        for m in claimed:
            lane = self.lanes[m.server_id]
            if lane.server is None:
                self.finish(m, fail_now("the e-mail server configuration no longer exists"))
                continue
            if self.leaves(lane.server):
                postpone.append((m, 0.0, None))  # ready again at once, for another process
                left = True
                continue
            reason = oauth2_wait_reason(lane.server, lane.oauth2_state, lane.tokens is not None)
            if reason is not None:
                postpone.append((m, OAUTH2_RECHECK_S, reason))
                continue
            by_lane.setdefault(m.server_id, []).append(m)
        for sid, waiting in by_lane.items():
            lane = self.lanes[sid]
            slots = await self._reserve(lane, waiting)
            now = self._now()
            for m, (slot, keep, why) in zip(waiting, slots, strict=True):
                if not keep:
                    postpone.append((m, max(0.0, slot - now), why))
                    continue
                lane.paused = False  # the claim let it through: the pause is over, or a probe
                lane.queue.append((m, slot))
                lane.more.set()
                if lane.sessions < lane.max_connections and len(lane.queue) > lane.idle:
                    lane.sessions += 1
                    self._spawn(self._session_loop(lane))
        if left:
            self.on_left()
        if postpone:
            await self.postpone(postpone)

    async def _reserve(
        self, lane: Lane, waiting: list[Claimed]
    ) -> list[tuple[float, bool, str | None]]:
        """(send time, keep, why not) of each message, under the configuration's rate and
        daily limits as every process together holds them."""
        assert lane.server is not None
        now = self._now()
        limits = lane.server.config.limits
        spacing = spacing_s(limits)
        per_day = limits.recipients_per_day
        if not spacing and per_day is None:
            return [(now, True, None)] * len(waiting)
        try:
            slots = await asyncio.to_thread(
                self.limits.reserve,
                lane.server.id,
                spacing,
                per_day,
                [len(m.rcpt_to) for m in waiting],
                self.max_wait_s,
            )
        except Exception:
            log.warning("reserving send slots failed; trying again shortly", exc_info=True)
            return [(now + LIMITS_RETRY_S, False, None)] * len(waiting)
        return [(s.at.timestamp(), s.keep, s.reason) for s in slots]

    def _refresh_lane(self, sid: int | None, target: Target) -> None:
        server = target.server
        if server is None:
            lane = Lane(None, None, 1)
        else:
            lane = Lane(
                server,
                self.tokens_for(server),
                server.config.limits.max_connections,
                oauth2_state=target.oauth2_state,
            )
        old = self.lanes.get(sid)
        if old is None or (old.sessions == 0 and not old.queue):
            self.lanes[sid] = lane

    async def _connection_slot(self, lane: Lane) -> int | None:
        """One of the configuration's installation-wide connection slots, waiting a little
        when all are held elsewhere; ``None`` if none came free (or the lane needs none)."""
        assert lane.server is not None
        waited, delay = 0.0, 0.05
        while True:
            try:
                got = await asyncio.to_thread(
                    self.limits.acquire_connection,
                    lane.server.id,
                    lane.max_connections,
                    self.holder,
                )
            except Exception:
                log.warning("taking a connection slot failed", exc_info=True)
                got = None
            if got is not None:
                return got
            if not lane.queue or lane.paused or self.stopping or waited >= CONNECTION_WAIT_S:
                return None
            if lane.sessions > 1:
                return None  # another session of this lane serves its queue
            await self.sleep(delay)
            waited += delay
            delay = min(delay * 2, 1.0)

    async def _session_loop(self, lane: Lane) -> None:
        assert lane.server is not None
        sid = lane.server.id
        connection = await self._connection_slot(lane)
        if connection is None:
            lane.sessions -= 1
            if lane.sessions == 0 and lane.queue:
                # Every connection the configuration may have is open in other processes:
                # its mail goes back to them, ready at once, instead of waiting here.
                waiting = [m for m, _slot in lane.queue]
                lane.queue.clear()
                self.busy_elsewhere(sid)
                await self.postpone([(m, 0.0, None) for m in waiting])
            return
        self.held_connections.add((sid, connection))
        session: DeliverySession | None = None
        try:
            while True:
                if lane.paused:
                    break
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
                        session = await self._open(lane)
                    except SessionFailed as failed:
                        self.finish(m, failed.result)
                        if failed.result.pause is not None:
                            await self._pause(lane, failed.result)
                            break
                        # Every message waiting for this configuration would fail the same way.
                        while lane.queue:
                            self.finish(lane.queue.popleft()[0], failed.result)
                        break
                delay = slot - self._now()
                if delay > 0:
                    await self.sleep(delay)
                if self.before_send is not None and not await self.before_send(m):
                    continue
                deadline = send_deadline_s(lane.server, len(m.raw))
                started = time.monotonic()
                try:
                    async with asyncio.timeout(deadline):
                        result = await session.send(m.mail_from, m.rcpt_to, m.raw)
                except TimeoutError:
                    # The session dripped: it is dropped, and the message may have arrived.
                    result = AttemptResult(
                        Outcome.TEMPORARY,
                        None,
                        f"no complete answer within {deadline:g} s (the deadline of one "
                        "message on a session)",
                        int((time.monotonic() - started) * 1000),
                        step="data",
                        possibly_delivered=True,
                    )
                    self._spawn(_close(session))
                    session = None
                except Exception as exc:  # the transport classifies; anything else: retry later
                    log.warning("send of %s failed unexpectedly: %s", m.id, type(exc).__name__)
                    result = unexpected_error()
                self.finish(m, result)
                if result.pause is not None:
                    await self._pause(lane, result)
                    break
                if session is None:
                    continue
                if result.outcome is not Outcome.DELIVERED and not session.usable:
                    await _close(session)
                    session = None
        finally:
            lane.sessions -= 1
            if session is not None:
                await _close(session)
            self.held_connections.discard((sid, connection))
            try:
                await asyncio.to_thread(
                    self.limits.release_connection, sid, connection, self.holder
                )
            except Exception:
                log.warning("releasing a connection slot failed (its lease ends it)")

    async def _pause(self, lane: Lane, result: AttemptResult) -> None:
        """Stop the lane: its sessions take nothing more, and the messages it holds go back
        to the queue untried (deferred, not failed). Recording ``result`` pauses the
        configuration in the database for every process; the time given here is only the
        first guess of that pause."""
        assert result.pause is not None
        lane.paused = True
        waiting = [m for m, _slot in lane.queue]
        lane.queue.clear()
        if waiting:
            after = self.pauses.window(result.pause, 1).total_seconds()
            reason = f"paused: {describe_pause(result.pause)}: {describe(result.code, result.text)}"
            await self.postpone([(m, after, reason) for m in waiting])

    def hold(self, server_ids: Collection[int]) -> None:
        """Configurations another process paused: the lanes holding their mail stop and give it
        back (``apply`` of the service's periodic look at the pauses)."""
        for sid in server_ids:
            lane = self.lanes.get(sid)
            if lane is None or lane.paused:
                continue
            lane.paused = True
            waiting = [m for m, _slot in lane.queue]
            lane.queue.clear()
            if waiting:
                reason = "paused: another worker's attempt paused this e-mail server"
                self._spawn(self.postpone([(m, 1.0, reason) for m in waiting]))

    async def _open(self, lane: Lane) -> DeliverySession:
        """A session of the lane's transport, within the deadline of the whole opening."""
        assert lane.server is not None
        deadline = open_deadline_s(lane.server)
        started = time.monotonic()
        try:
            async with asyncio.timeout(deadline):
                return await self.open_session(lane.server, lane.tokens)
        except TimeoutError:
            raise SessionFailed(
                AttemptResult(
                    Outcome.TEMPORARY,
                    None,
                    f"the session to e-mail server {lane.server.name!r} did not open within "
                    f"{deadline:g} s",
                    int((time.monotonic() - started) * 1000),
                    step="connect",
                )
            ) from None

    def take_waiting(self) -> list[Claimed]:
        """Remove and return every message not yet started (to give back on shutdown)."""
        waiting = [m for lane in self.lanes.values() for m, _slot in lane.queue]
        for lane in self.lanes.values():
            lane.queue.clear()
            lane.more.set()
        return waiting

    async def join(self) -> None:
        """Wake idle sessions so they close, and wait for every session to end."""
        for lane in self.lanes.values():
            lane.more.set()
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _close(session: DeliverySession) -> None:
    try:
        await session.close()
    except Exception:
        log.debug("closing a delivery session failed", exc_info=True)
