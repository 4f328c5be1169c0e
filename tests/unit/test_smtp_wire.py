"""Envelope helpers of adapters/smtp/wire.py that need no server (the fast paths' equivalence
with the library is tests/integration/test_smtp_data_wire.py)."""

from __future__ import annotations

from mailgate.adapters.smtp.wire import needs_smtputf8


def test_smtputf8_detection() -> None:
    assert not needs_smtputf8("a@example.com", ["b@example.org"])
    assert needs_smtputf8("a@example.com", ["jørgen@example.dk"])
    assert needs_smtputf8("小@example.com", [])
