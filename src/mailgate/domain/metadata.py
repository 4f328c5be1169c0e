"""Message metadata: the caller's own keys and values (an order number, a customer id),
stored with the message, returned with it, filterable, and carried in every event about it.

Limits (README "Message metadata"): string keys and values, at most ``MAX_PAIRS`` pairs and
``MAX_BYTES`` bytes in all (the UTF-8 bytes of every key and value). Keys are 1 to 64 of
``A-Z a-z 0-9 _ . : -``, so that ``?metadata.KEY=VALUE`` names them plainly and the JSON
path of the filter needs no quoting on either database (SQLite compares keys as stored,
escaped); values may be any text but NUL (PostgreSQL cannot store it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mailgate.domain.errors import FieldError

MAX_PAIRS = 20
MAX_BYTES = 2048
MAX_KEY_CHARS = 64
FILTER_PREFIX = "metadata."
KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def metadata_errors(value: object, field: str = "metadata") -> list[FieldError]:
    """Why ``value`` is not acceptable metadata (empty: it is)."""
    if not isinstance(value, Mapping):
        return [FieldError(field, "an object of string keys and string values is expected")]
    if len(value) > MAX_PAIRS:
        return [FieldError(field, f"at most {MAX_PAIRS} pairs; {len(value)} given")]
    errors: list[FieldError] = []
    size = 0
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            errors.append(FieldError(field, "keys are non-empty strings"))
            continue
        where = f"{field}.{key}"
        if not KEY.match(key):
            errors.append(
                FieldError(where, f"a key is 1 to {MAX_KEY_CHARS} of A-Z a-z 0-9 _ . : -")
            )
            continue
        if not isinstance(item, str):
            errors.append(FieldError(where, "values are strings"))
            continue
        if "\x00" in item:
            errors.append(FieldError(where, "must not contain NUL characters"))
            continue
        size += len(key.encode()) + len(item.encode())
    if not errors and size > MAX_BYTES:
        errors.append(
            FieldError(field, f"at most {MAX_BYTES} bytes of keys and values in all; {size} given")
        )
    return errors
