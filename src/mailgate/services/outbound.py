"""The installation's outbound destination policy as it is now: the system setting
``outbound_policy`` plus ``MAILGATE_OUTBOUND_DENY`` (``domain/outbound.py``).

Read on every connection a tenant aims, so it is kept for a few seconds: a change made
through the API applies at once in this process (``invalidate``) and within ``ttl_s`` in
every other one. Reads go through the read-only engine (on SQLite they never wait for the
write lock); when the database cannot be read, the last known policy stays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Engine, select

from mailgate.adapters.db.tables import SystemSetting
from mailgate.domain.outbound import DEFAULT_DENY_NETWORKS, SETTING_KEY, OutboundPolicy

log = logging.getLogger("mailgate.outbound")


def policy_of(setting: object, extra: Sequence[str]) -> OutboundPolicy:
    """The policy from the stored setting (``{"deny_networks": [...]}``, or nothing: the
    default) and the environment's networks. An unreadable entry keeps the default."""
    networks: list[str] = list(DEFAULT_DENY_NETWORKS)
    if isinstance(setting, dict) and isinstance(setting.get("deny_networks"), list):
        networks = [str(n) for n in setting["deny_networks"]]
    try:
        return OutboundPolicy.of(networks, extra)
    except ValueError:
        log.error("outbound_policy: unreadable deny_networks; using the default")
        return OutboundPolicy.of(DEFAULT_DENY_NETWORKS, extra)


class OutboundPolicySource:
    """``adapters.outbound.PolicySource``: call it for the current policy."""

    def __init__(
        self,
        engine: Engine,
        extra_deny: Sequence[str] = (),
        *,
        ttl_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.extra_deny = tuple(extra_deny)
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._policy = OutboundPolicy.of(DEFAULT_DENY_NETWORKS, self.extra_deny)
        self._read_at: float | None = None

    def __call__(self) -> OutboundPolicy:
        now = self.monotonic()
        if self._read_at is not None and now - self._read_at < self.ttl_s:
            return self._policy
        with self._lock:
            if self._read_at is None or now - self._read_at >= self.ttl_s:
                try:
                    with self.engine.connect() as conn:
                        value = conn.scalar(
                            select(SystemSetting.value).where(SystemSetting.key == SETTING_KEY)
                        )
                    self._policy = policy_of(value, self.extra_deny)
                except Exception as exc:  # the database is down: keep the last policy
                    log.warning("outbound_policy: cannot read it (%s)", type(exc).__name__)
                self._read_at = now
        return self._policy

    def invalidate(self) -> None:
        """The setting changed in this process: read it on the next call."""
        self._read_at = None
