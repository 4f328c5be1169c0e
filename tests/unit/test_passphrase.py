"""The passphrase envelope of export files: pure crypto, no database."""

from __future__ import annotations

import base64

import pytest

from mailgate.adapters import passphrase as envelope
from mailgate.domain.errors import EnvelopeError


def test_round_trip_and_every_kind_of_tampering_fails() -> None:
    sealed = envelope.seal("passphrase-1", b"secret bytes", b"document")
    assert b"secret bytes" not in base64.b64decode(sealed["ciphertext"])
    assert envelope.open_sealed("passphrase-1", sealed, b"document") == b"secret bytes"
    # A second seal of the same input differs (random salt and nonce).
    again = envelope.seal("passphrase-1", b"secret bytes", b"document")
    assert again["kdf"]["salt"] != sealed["kdf"]["salt"]
    assert again["ciphertext"] != sealed["ciphertext"]

    with pytest.raises(EnvelopeError, match="passphrase is wrong"):
        envelope.open_sealed("passphrase-2", sealed, b"document")
    with pytest.raises(EnvelopeError, match="changed after"):
        envelope.open_sealed("passphrase-1", sealed, b"documenT")
    other_salt = {**sealed, "kdf": {**sealed["kdf"], "salt": again["kdf"]["salt"]}}
    with pytest.raises(EnvelopeError):
        envelope.open_sealed("passphrase-1", other_salt, b"document")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cipher": "ChaCha20"}, "unsupported cipher"),
        ({"kdf": {"name": "pbkdf2"}}, "unsupported key derivation"),
        ({"kdf": {"name": "scrypt", "salt": "AAAA", "n": 2**30, "r": 8, "p": 1}}, "out of range"),
        ({"kdf": {"name": "scrypt", "salt": "AAAA", "n": 1000, "r": 8, "p": 1}}, "out of range"),
        ({"kdf": {"name": "scrypt", "salt": "AAAA", "n": "16", "r": 8, "p": 1}}, "integers"),
        ({"nonce": "***"}, "not valid base64"),
        ({"nonce": "AAAA"}, "wrong length"),
    ],
)
def test_malformed_envelopes_are_refused_before_any_work(
    change: dict[str, object], message: str
) -> None:
    good = {
        "kdf": {"name": "scrypt", "salt": "A" * 24, "n": 2**14, "r": 8, "p": 1},
        "cipher": "AES-256-GCM",
        "nonce": "A" * 16,
        "ciphertext": "A" * 32,
    }
    with pytest.raises(EnvelopeError, match=message):
        envelope.open_sealed("x", {**good, **change}, b"")
