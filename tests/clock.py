"""The tests' clock, injected with ``build(settings, clock=...)``: the one way a test moves
mailgate's time (token expiry, sign-in lockouts, retries, schedules, pacing)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class TestClock:
    """Stands still at ``start`` (default: now, whole seconds) and moves only when the test
    moves it. ``ticking=True``: runs with real time, plus what the test moved it, for tests
    whose peers see real time (the local OAuth2 server's token lifetimes)."""

    __test__ = False  # a helper, not a test class

    def __init__(self, start: datetime | None = None, *, ticking: bool = False) -> None:
        if ticking and start is not None:
            raise ValueError("a ticking clock starts at the real time")
        self.start = start or datetime.now(UTC).replace(microsecond=0)
        self.ticking = ticking
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return (datetime.now(UTC) if self.ticking else self.start) + self.offset

    @property
    def now(self) -> datetime:
        return self()

    def advance(self, **kw: float) -> None:
        """``advance(minutes=5)``: the keywords of ``timedelta``."""
        self.offset += timedelta(**kw)

    async def sleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` to inject that takes no real time: the clock moves to the
        sleep's end (concurrent sleepers share one timeline, as on a real clock)."""
        deadline = self.offset + timedelta(seconds=seconds)
        await asyncio.sleep(0)
        self.offset = max(self.offset, deadline)
