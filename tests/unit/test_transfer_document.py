"""The export document's canonical form (what the secrets envelope is bound to)."""

from __future__ import annotations

import pytest

from mailgate.services.transfer.document import canonical


def test_canonical_ignores_key_order_and_spacing() -> None:
    assert canonical({"b": 1, "a": [1.5, "é"]}) == canonical({"a": [1.5, "é"], "b": 1})
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})
