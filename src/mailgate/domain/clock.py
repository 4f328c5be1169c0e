"""Time as a dependency, so retry and expiry logic is tested on an injected clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import overload

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def isoformat(value: datetime) -> str: ...
@overload
def isoformat(value: None) -> None: ...
@overload
def isoformat(value: datetime | None) -> str | None: ...


def isoformat(value: datetime | None) -> str | None:
    """RFC 3339 (section 5.6) date-time in UTC, written with a ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
