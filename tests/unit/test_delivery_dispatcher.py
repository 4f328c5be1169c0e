"""The delivery service and its dispatcher on fakes: an in-memory queue, a scripted
transport and a clock that moves only when the service sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.clock import TestClock

from mailgate.domain.delivery import Claimed, Heartbeat, Journaled, Recorded
from mailgate.domain.messages import AttemptResult, Decision, Outcome, Status
from mailgate.domain.pauses import PauseKind, PauseSignal
from mailgate.ports import DeliveryLimits, SessionFailed, TokenProvider
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets
from mailgate.services.delivery.dispatcher import CONNECTION_WAIT_S, Target
from mailgate.services.delivery.policy import LocalLimits
from mailgate.services.delivery.service import DeliveryService, DeliverySettings

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


@dataclass
class MemoryQueue:
    """``ports.DeliveryQueue`` in memory: every message is ready once."""

    ready: list[Claimed]
    skipped: list[list[int]] = field(default_factory=list)
    """What each claim was told to leave out."""
    recorded: list[tuple[Claimed, AttemptResult]] = field(default_factory=list)
    postponed: list[tuple[Claimed, datetime, str | None]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    def claim(
        self,
        worker_id: str,
        limit: int,
        skip_servers: Collection[int] = (),
        per_server: int | None = None,
        held: dict[int, int] | None = None,
    ) -> list[Claimed]:
        self.skipped.append(sorted(skip_servers))
        taken: list[Claimed] = []
        room = dict(held or {})
        for m in self.ready:
            if len(taken) >= limit or m.server_id in skip_servers:
                continue
            if per_server is not None and m.server_id is not None:
                if room.get(m.server_id, 0) >= per_server:
                    continue
                room[m.server_id] = room.get(m.server_id, 0) + 1
            taken.append(m)
        self.ready = [m for m in self.ready if m not in taken]
        return taken

    def record(
        self, worker_id: str, items: Sequence[tuple[Claimed, AttemptResult]]
    ) -> list[Recorded]:
        self.recorded.extend(items)
        status = {Outcome.DELIVERED: Status.SENT, Outcome.TEMPORARY: Status.DEFERRED}
        return [
            Recorded(m, r, Decision(status.get(r.outcome, Status.FAILED), None, None, []))
            for m, r in items
        ]

    def journal(
        self,
        worker_id: str,
        start: Sequence[str],
        items: Sequence[tuple[Claimed, AttemptResult]],
    ) -> Journaled:
        self.started.extend(start)
        return Journaled(frozenset(start), self.record(worker_id, items))

    def postpone(
        self, worker_id: str, items: Sequence[tuple[Claimed, datetime, str | None]]
    ) -> None:
        self.postponed.extend(items)

    def extend(self, worker_id: str, ids: Sequence[str]) -> None:
        pass

    def heartbeat(self, worker_id: str, dead_after: timedelta) -> Heartbeat:
        return Heartbeat(False, [], 0)

    def leave(self, worker_id: str) -> None:
        pass

    def abandon(self, worker_id: str) -> int:
        return 0

    def next_due(self, skip_servers: Collection[int] = ()) -> datetime | None:
        return None

    paused: list[int] = field(default_factory=list)

    def paused_servers(self) -> list[int]:
        return list(self.paused)

    def outcome_of(self, mid: str) -> AttemptResult:
        return next(r for m, r in self.recorded if m.id == mid)


async def _inline(function: Any, *args: Any) -> Any:
    """The memory queue's calls take no time: run them on the test's timeline."""
    return function(*args)


@dataclass
class Sent:
    server: str
    message: str
    at: float
    session: int


class ScriptedTransport:
    """``ports.Transport``: records every send with the clock's time and its session."""

    def __init__(self, clock: TestClock) -> None:
        self.clock = clock
        self.sent: list[Sent] = []
        self.opened: dict[str, int] = {}
        self.open_now: dict[str, int] = {}
        self.most_open: dict[str, int] = {}
        self.refuse: dict[str, AttemptResult] = {}
        self.raise_on: set[str] = set()
        self.block: dict[str, asyncio.Event] = {}
        self.answers: dict[str, AttemptResult] = {}

    async def open(self, server: ResolvedServer, tokens: TokenProvider | None) -> Any:
        if server.name in self.refuse:
            raise SessionFailed(self.refuse[server.name])
        self.opened[server.name] = self.opened.get(server.name, 0) + 1
        self.open_now[server.name] = self.open_now.get(server.name, 0) + 1
        self.most_open[server.name] = max(
            self.most_open.get(server.name, 0), self.open_now[server.name]
        )
        return _Session(self, server.name, self.opened[server.name])


class _Session:
    def __init__(self, transport: ScriptedTransport, server: str, number: int) -> None:
        self.transport = transport
        self.server = server
        self.number = number
        self.usable = True

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult:
        mid = raw.decode()
        if mid in self.transport.raise_on:
            raise RuntimeError("a bug in a transport")
        self.transport.sent.append(
            Sent(self.server, mid, self.transport.clock.offset.total_seconds(), self.number)
        )
        if mid in self.transport.block:
            await self.transport.block[mid].wait()
        await asyncio.sleep(0.001)  # other sessions run meanwhile
        return self.transport.answers.get(mid, AttemptResult(Outcome.DELIVERED, 250, "2.0.0 ok", 1))

    async def close(self) -> None:
        self.transport.open_now[self.server] -= 1


class Counter:
    def __init__(self) -> None:
        self.statuses: list[Status] = []

    def observe_attempt(
        self,
        code: int | None,
        status: Status,
        created_at: datetime,
        now: datetime,
        *,
        possibly_delivered: bool = False,
    ) -> None:
        self.statuses.append(status)


def config(server_id: int, limits: dict[str, Any] | None = None, **auth: str) -> ResolvedServer:
    cfg = EmailServerIn.model_validate(
        {
            "name": f"S{server_id}",
            "host": "smtp.example.com",
            "limits": limits or {},
            "authentication": auth or {"method": "none"},
        }
    )
    return ResolvedServer(server_id, 1, f"S{server_id}", cfg, ServerSecrets())


def messages(server_id: int | None, n: int, prefix: str = "") -> list[Claimed]:
    return [
        Claimed(
            id=f"{prefix or server_id}-{i}",
            tenant_id=1,
            server_id=server_id,
            server_name=f"S{server_id}",
            mail_from="a@example.com",
            rcpt_to=["b@example.org"],
            raw=f"{prefix or server_id}-{i}".encode(),
            attempt_count=0,
            created_at=T0,
            expires_at=T0 + timedelta(days=2),
        )
        for i in range(n)
    ]


@dataclass
class Rig:
    clock: TestClock
    queue: MemoryQueue
    transport: ScriptedTransport
    counter: Counter
    service: DeliveryService


def rig(
    ready: list[Claimed],
    targets: dict[int | None, Target],
    *,
    batch: int = 50,
    lease_s: float = 120,
    tokens: bool = True,
    leaves: Any = lambda _server: False,
    skip_reads: list[int] | None = None,
    limits: Callable[[TestClock], DeliveryLimits] | None = None,
) -> Rig:
    clock = TestClock(T0)  # it moves only when the service sleeps
    queue = MemoryQueue(list(ready))
    transport = ScriptedTransport(clock)
    counter = Counter()

    def load(ids: Collection[int | None]) -> dict[int | None, Target]:
        return {sid: targets.get(sid, Target(None)) for sid in ids}

    class _Tokens:
        async def access_token(self, *, force_refresh: bool = False) -> str:
            return "token"

    service = DeliveryService(
        "w1",
        queue,
        transport.open,
        load,
        lambda server: _Tokens() if tokens else None,
        lambda: (skip_reads.append(1) if skip_reads is not None else None) or [],
        counter,
        DeliverySettings(batch=batch, lease_s=lease_s, poll_s=0.05),
        clock=clock,
        sleep=clock.sleep,
        run_blocking=_inline,
        gather_marks=False,
        leaves=leaves,
        limits=limits(clock) if limits else None,
    )
    return Rig(clock, queue, transport, counter, service)


def test_messages_per_minute_spaces_sends_on_the_injected_clock() -> None:
    r = rig(messages(1, 5), {1: Target(config(1, {"messages_per_minute": 60}))})
    assert asyncio.run(r.service.run_once()) == 5
    assert [s.at for s in r.transport.sent] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert r.counter.statuses == [Status.SENT] * 5


def test_a_rate_limit_does_not_hold_mail_past_half_its_lease() -> None:
    # 2 a minute, lease 60 s: slots at 0, 30 s are kept; later ones go back to the queue,
    # due at their slot, without attempt and without using up the slot.
    r = rig(messages(1, 4), {1: Target(config(1, {"messages_per_minute": 2}))}, lease_s=60)
    assert asyncio.run(r.service.run_once()) == 4
    assert [s.at for s in r.transport.sent] == [0.0, 30.0]
    assert [(m.id, when - T0, reason) for m, when, reason in r.queue.postponed] == [
        ("1-2", timedelta(seconds=60), None),
        ("1-3", timedelta(seconds=60), None),
    ]


def test_max_connections_bounds_sessions_which_are_reused() -> None:
    r = rig(messages(1, 12), {1: Target(config(1, {"max_connections": 2}))})
    assert asyncio.run(r.service.run_once()) == 12
    assert r.transport.most_open["S1"] == 2
    assert r.transport.opened["S1"] == 2
    assert len({s.message for s in r.transport.sent}) == 12
    assert r.transport.open_now["S1"] == 0  # closed after the cycle


class HeldElsewhere(LocalLimits):
    """Every connection slot of ``servers`` is held by another process's sessions."""

    def __init__(self, clock: TestClock, servers: set[int]) -> None:
        super().__init__(clock)
        self.servers = servers

    def acquire_connection(self, server_id: int, limit: int, holder: str) -> int | None:
        if server_id in self.servers:
            return None
        return super().acquire_connection(server_id, limit, holder)


def test_mail_whose_connections_are_all_open_elsewhere_goes_back_at_once() -> None:
    """The process holding the connections sends it (the give-back wakes it); this one
    leaves that configuration's mail alone for a moment instead of claiming it again."""
    r = rig(
        messages(1, 3) + messages(2, 2),
        {1: Target(config(1, {"max_connections": 2})), 2: Target(config(2))},
        limits=lambda clock: HeldElsewhere(clock, {1}),
    )
    assert asyncio.run(r.service.run_once()) == 5
    assert sorted(s.message for s in r.transport.sent) == ["2-0", "2-1"]
    assert "S1" not in r.transport.opened
    back = sorted(r.queue.postponed, key=lambda item: item[0].id)
    assert [(m.id, reason) for m, _when, reason in back] == [(f"1-{i}", None) for i in range(3)]
    # Ready again after the short wait for a slot, not after a retry delay.
    waited = timedelta(seconds=CONNECTION_WAIT_S + 0.2)
    assert all(when - T0 <= waited for _m, when, _r in back), back
    assert r.queue.skipped == [[], [1]]  # the claim after it left configuration 1 out


def test_one_configuration_failing_to_open_fails_only_its_own_mail() -> None:
    refused = AttemptResult(Outcome.TEMPORARY, 421, "4.7.0 try later", 3, step="connect")
    r = rig(
        messages(1, 3) + messages(2, 3),
        {1: Target(config(1, {"max_connections": 1})), 2: Target(config(2))},
    )
    r.transport.refuse["S1"] = refused
    assert asyncio.run(r.service.run_once()) == 6
    assert [r.queue.outcome_of(f"1-{i}") for i in range(3)] == [refused] * 3
    assert [s.message for s in r.transport.sent] == ["2-0", "2-1", "2-2"]


def test_mail_of_a_deleted_configuration_fails_without_trying() -> None:
    r = rig(messages(9, 2), {})
    assert asyncio.run(r.service.run_once()) == 2
    result = r.queue.outcome_of("9-0")
    assert result.outcome is Outcome.PERMANENT and "no longer exists" in result.text
    assert r.transport.sent == []


def test_mail_this_process_must_leave_is_given_back_untried() -> None:
    """A worker process that claimed a configuration's mail before its list of
    configurations to leave (remote output, read every 2 s) knew it: the mail goes back
    ready at once, untried and without an attempt, and the list is read again."""
    reads: list[int] = []
    r = rig(
        [*messages(4, 2), *messages(1, 1)],
        {4: Target(config(4)), 1: Target(config(1))},
        leaves=lambda server: server.id == 4,
        skip_reads=reads,
    )
    assert asyncio.run(r.service.run_once()) == 3
    assert [s.message for s in r.transport.sent] == ["1-0"]
    assert [m.id for m, _r in r.queue.recorded] == ["1-0"]
    assert sorted((m.id, when, reason) for m, when, reason in r.queue.postponed) == [
        ("4-0", T0, None),
        ("4-1", T0, None),
    ]
    assert len(reads) == 2  # read for the first claim, and again after the hand-back


def test_oauth2_mail_waits_for_authorization_instead_of_failing() -> None:
    oauth = config(
        3,
        method="oauth2",
        provider="google",
        grant="authorization_code",
        username="a@example.com",
        client_id="id",
    )
    r = rig(messages(3, 2), {3: Target(oauth, "needs_reauthorization")})
    assert asyncio.run(r.service.run_once()) == 2
    assert r.transport.sent == [] and r.queue.recorded == []
    due = {(when - T0).total_seconds() for _m, when, _r in r.queue.postponed}
    assert due == {60.0}
    assert all("sign in again" in (reason or "") for _m, _w, reason in r.queue.postponed)


def test_a_transport_that_raises_defers_the_message_and_the_lane_goes_on() -> None:
    r = rig(messages(1, 3), {1: Target(config(1))})
    r.transport.raise_on.add("1-1")
    assert asyncio.run(r.service.run_once()) == 3
    assert r.queue.outcome_of("1-1").outcome is Outcome.TEMPORARY
    assert r.queue.outcome_of("1-2").outcome is Outcome.DELIVERED


@pytest.mark.timeout(10)
def test_run_gives_back_what_it_has_not_started_when_stopped() -> None:
    # One connection: 1-0 is on the wire when stop comes; 1-1 and 1-2 wait in the lane and
    # go back to the queue, due now; 1-0 is finished and recorded, not abandoned.
    r = rig(messages(1, 3), {1: Target(config(1, {"max_connections": 1}))})
    r.transport.block["1-0"] = asyncio.Event()

    async def scenario() -> None:
        stop, wake = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(r.service.run(stop, wake))
        while not r.transport.sent:
            await asyncio.sleep(0.001)
        stop.set()
        await asyncio.sleep(0.01)
        r.transport.block["1-0"].set()
        await task

    asyncio.run(scenario())
    assert [s.message for s in r.transport.sent] == ["1-0"]
    assert [m.id for m, _r in r.queue.recorded] == ["1-0"]
    assert [(m.id, when) for m, when, _r in r.queue.postponed] == [("1-1", T0), ("1-2", T0)]


QUOTA = AttemptResult(
    Outcome.TEMPORARY,
    554,
    "5.2.0 SubmissionQuotaExceeded",
    2,
    pause=PauseSignal(PauseKind.QUOTA, "microsoft_submission_quota"),
)


def test_a_pause_answer_stops_its_lane_and_gives_its_mail_back_untried() -> None:
    r = rig(
        messages(1, 5) + messages(2, 3),
        {1: Target(config(1, {"max_connections": 1})), 2: Target(config(2))},
    )
    r.transport.answers["1-0"] = QUOTA
    assert asyncio.run(r.service.run_once()) == 8
    assert [s.message for s in r.transport.sent if s.server == "S1"] == ["1-0"]
    assert r.queue.outcome_of("1-0") is QUOTA
    back = [(m.id, when - T0, reason) for m, when, reason in r.queue.postponed]
    assert [b[0] for b in back] == ["1-1", "1-2", "1-3", "1-4"]
    assert {b[1] for b in back} == {timedelta(hours=1)}
    assert all(
        reason and reason.startswith("paused: ") and "5.2.0" in reason for *_x, reason in back
    )
    assert sorted(s.message for s in r.transport.sent if s.server == "S2") == ["2-0", "2-1", "2-2"]


def test_a_pause_answer_to_opening_a_session_defers_only_the_message_that_tried() -> None:
    throttled = AttemptResult(
        Outcome.TEMPORARY,
        421,
        "4.7.0 Try again later, closing connection.",
        3,
        step="connect",
        pause=PauseSignal(PauseKind.THROTTLED, "generic_4_7_throttling"),
    )
    r = rig(messages(1, 3), {1: Target(config(1, {"max_connections": 1}))})
    r.transport.refuse["S1"] = throttled
    assert asyncio.run(r.service.run_once()) == 3
    assert [m.id for m, _r in r.queue.recorded] == ["1-0"]
    assert [m.id for m, _w, _r in r.queue.postponed] == ["1-1", "1-2"]


def test_a_send_that_never_ends_costs_its_lane_only_its_deadline() -> None:
    # A server that answers every command just in time: the transport's per-command
    # deadline never fires; the deadline of the whole message does (4 x 0.05 + 0.1 s here).
    timeouts = {"connect_s": 0.05, "command_s": 0.05, "data_done_s": 0.1}
    slow = config(1, {"max_connections": 1})
    slow = ResolvedServer(
        slow.id,
        slow.tenant_id,
        slow.name,
        slow.config.model_copy(
            update={"timeouts": slow.config.timeouts.model_copy(update=timeouts)}
        ),
        slow.secrets,
    )
    r = rig(messages(1, 2) + messages(2, 2), {1: Target(slow), 2: Target(config(2))})
    r.transport.block["1-0"] = asyncio.Event()  # never set
    started = time.monotonic()
    assert asyncio.run(r.service.run_once()) == 4
    assert time.monotonic() - started < 2
    stuck = r.queue.outcome_of("1-0")
    assert stuck.outcome is Outcome.TEMPORARY and stuck.possibly_delivered
    assert "deadline" in stuck.text
    # The lane went on with a new session; the other configuration never waited.
    assert r.queue.outcome_of("1-1").outcome is Outcome.DELIVERED
    assert r.transport.opened["S1"] == 2
    assert [r.queue.outcome_of(f"2-{i}").outcome for i in range(2)] == [Outcome.DELIVERED] * 2


def test_a_hanging_lane_does_not_stop_the_worker_claiming_for_others() -> None:
    async def scenario() -> Rig:
        r = rig(
            messages(1, 10),
            {1: Target(config(1, {"max_connections": 2})), 2: Target(config(2))},
            batch=8,
        )
        for i in range(10):
            r.transport.block[f"1-{i}"] = asyncio.Event()  # its server never answers
        stop, wake = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(r.service.run(stop, wake))
        await _until(lambda: len(r.transport.sent) == 2)  # both sessions hang
        # Its lane is full (a quarter of the batch, at least 4); the rest waits in the queue.
        assert r.service.by_server[1] == 4
        r.queue.ready += messages(2, 2)
        wake.set()
        for _ in range(100):
            if len([s for s in r.transport.sent if s.server == "S2"]) == 2:
                break
            await asyncio.sleep(0.01)
        stop.set()
        for event in r.transport.block.values():
            event.set()
        await task
        return r

    r = asyncio.run(scenario())
    assert [s.message for s in r.transport.sent if s.server == "S2"] == ["2-0", "2-1"]


def test_a_pause_another_process_began_stops_the_lane_within_a_second() -> None:
    async def scenario() -> Rig:
        r = rig(messages(1, 5), {1: Target(config(1, {"max_connections": 1}))})
        r.transport.block["1-0"] = asyncio.Event()  # the first send is under way
        stop, wake = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(r.service.run(stop, wake))
        await _until(lambda: len(r.transport.sent) == 1)
        r.queue.paused = [1]  # another process recorded a quota answer
        for _ in range(300):
            if r.queue.postponed:
                break
            await asyncio.sleep(0.01)
        r.transport.block["1-0"].set()
        await asyncio.sleep(0.05)
        stop.set()
        await task
        return r

    r = asyncio.run(scenario())
    assert [s.message for s in r.transport.sent] == ["1-0"]
    assert [m.id for m, _w, _r in r.queue.postponed] == ["1-1", "1-2", "1-3", "1-4"]
    assert all(reason and reason.startswith("paused: ") for *_x, reason in r.queue.postponed)


async def _until(condition: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")
