"""Delivery decisions that need no I/O: when a configuration's mail may go, and when not.

The retry policy itself (backoff, what a reply means for each recipient) is in
``domain/messages.py``; this module decides around an attempt: whether a configuration can be
used at all right now (OAuth2), and the pacing of ``limits.messages_per_minute``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mailgate.domain.clock import Clock
from mailgate.domain.delivery import SendSlot, per_day_reason
from mailgate.domain.messages import AttemptResult, Outcome
from mailgate.schemas.email_server import Limits, ResolvedServer


def oauth2_wait_reason(
    server: ResolvedServer, oauth2_state: str | None, has_token_provider: bool
) -> str | None:
    """Why mail of an OAuth2 configuration must wait instead of being tried, or ``None``.

    Waiting mail is deferred, never failed: an administrator signing in again releases it.
    """
    auth = server.config.authentication
    if auth.method != "oauth2":
        return None
    # Client credentials need no sign-in: the first token request authorizes them.
    app_only = auth.grant == "client_credentials"
    if oauth2_state != "authorized" and not (app_only and oauth2_state in (None, "not_authorized")):
        return (
            f"waiting for OAuth2 authorization of e-mail server {server.name!r} "
            f"(state: {oauth2_state or 'not_authorized'}); an administrator must sign in again"
        )
    if not has_token_provider:
        return f"waiting: no OAuth2 token provider is available for e-mail server {server.name!r}"
    return None


def spacing_s(limits: Limits) -> float:
    """Seconds between two messages of one configuration (0: no rate limit)."""
    return 60.0 / limits.messages_per_minute if limits.messages_per_minute else 0.0


@dataclass
class Pacer:
    """``messages_per_minute`` as evenly spaced send slots (a leaky bucket of depth one).

    Times are seconds on the delivery service's clock. A message whose slot lies further
    ahead than ``max_wait_s`` is not held in memory until then: the caller gives it back to
    the queue due at that slot (its lease would run out while it waited).
    """

    spacing_s: float
    next_slot: float = 0.0

    def reserve(self, now: float, max_wait_s: float) -> tuple[float, bool]:
        """(slot, keep): the time this message may be sent, and whether to keep it until then
        (``False``: give it back, due at ``slot``; no slot is used up)."""
        if not self.spacing_s:
            return now, True
        slot = max(now, self.next_slot)
        if slot - now > max_wait_s:
            return slot, False
        self.next_slot = slot + self.spacing_s
        return slot, True


class LocalLimits:
    """``ports.DeliveryLimits`` in memory: the limits of one process (the dispatcher's tests,
    and a dispatcher built without a database)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pacers: dict[int, Pacer] = {}
        self.sent: dict[int, list[tuple[datetime, int]]] = {}
        self.connections: dict[int, set[int]] = {}

    def reserve(
        self,
        server_id: int,
        spacing_s: float,
        per_day: int | None,
        recipients: Sequence[int],
        max_wait_s: float,
    ) -> list[SendSlot]:
        now = self.clock()
        pacer = self.pacers.setdefault(server_id, Pacer(spacing_s))
        pacer.spacing_s = spacing_s
        day = [(at, n) for at, n in self.sent.get(server_id, []) if at > now - DAY]
        used = sum(n for _at, n in day)
        out: list[SendSlot] = []
        for n in recipients:
            slot, keep = pacer.reserve(now.timestamp(), max_wait_s)
            at = datetime.fromtimestamp(slot, UTC)
            if keep and per_day is not None and used + n > per_day and used > 0:
                pacer.next_slot -= spacing_s  # not sent now: give the slot back
                until = frees_at(day, used, n, per_day, now)
                out.append(SendSlot(until, False, per_day_reason(per_day, until)))
                continue
            if keep:
                used += n
                day.append((now, n))
            out.append(SendSlot(at, keep))
        self.sent[server_id] = day
        return out

    def acquire_connection(self, server_id: int, limit: int, holder: str) -> int | None:
        held = self.connections.setdefault(server_id, set())
        free = next((i for i in range(limit) if i not in held), None)
        if free is not None:
            held.add(free)
        return free

    def renew_connections(self, holder: str, held: Collection[tuple[int, int]]) -> None:
        pass

    def release_connection(self, server_id: int, slot: int, holder: str) -> None:
        self.connections.get(server_id, set()).discard(slot)


DAY = timedelta(days=1)


def frees_at(
    window: Sequence[tuple[datetime, int]], used: int, n: int, per_day: int, now: datetime
) -> datetime:
    """When ``n`` more recipients fit in ``per_day``: as the oldest entries of the 24-hour
    ``window`` (time, recipients) age out."""
    left = used
    for at, count in sorted(window):
        left -= count
        if left + n <= per_day:
            return at + DAY
    return now + DAY


# The slowest transfer a message's deadline allows for its bytes (a server reading slower is
# as good as hanging).
MIN_BYTES_PER_S = 10_000


def open_deadline_s(server: ResolvedServer) -> float:
    """The whole opening of a session - resolve, connect, TLS, greeting, EHLO, STARTTLS,
    EHLO again, AUTH (two exchanges), a token - however the server drips its replies."""
    t = server.config.timeouts
    return 2 * t.connect_s + 6 * t.command_s


def send_deadline_s(server: ResolvedServer, size: int) -> float:
    """One message on an open session: MAIL, RCPT and DATA (pipelined or not), the bytes at
    ``MIN_BYTES_PER_S``, and the reply to the final dot. The transport's own deadline per
    command fires first; this one bounds the whole, so that a server answering each command
    just in time still costs a lane only so long."""
    t = server.config.timeouts
    return 4 * t.command_s + size / MIN_BYTES_PER_S + t.data_done_s


def fail_now(text: str) -> AttemptResult:
    """A permanent failure decided without trying (e.g. the configuration was deleted)."""
    return AttemptResult(Outcome.PERMANENT, None, text, 0)


def unexpected_error() -> AttemptResult:
    """A transport raised where it should have classified: try again later."""
    return AttemptResult(Outcome.TEMPORARY, None, "unexpected error", 0)
