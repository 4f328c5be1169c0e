"""A message's outcome from its recipients' (adapters/smtp/transaction.py)."""

from __future__ import annotations

import pytest

from mailgate.adapters.smtp.transaction import overall
from mailgate.domain.messages import Outcome

D, T, P = Outcome.DELIVERED, Outcome.TEMPORARY, Outcome.PERMANENT


@pytest.mark.parametrize(
    ("recipients", "expect"),
    [
        ([D], D),
        ([D, D], D),
        ([D, T], T),
        ([D, P], P),
        ([T, P], T),
        ([P, P], P),
        ([D, T, P], T),
    ],
)
def test_overall_outcome(recipients: list[Outcome], expect: Outcome) -> None:
    assert overall(recipients) is expect
