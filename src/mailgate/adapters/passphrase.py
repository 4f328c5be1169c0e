"""Passphrase encryption for export files (``ports.PassphraseEnvelope``): scrypt key
derivation, then AES-256-GCM.

The key comes from the passphrase by scrypt (RFC 7914), a memory-hard KDF, with a random
16-byte salt; the parameters N=2**17, r=8, p=1 follow the OWASP Password Storage Cheat Sheet
(128 MiB per guess). AES-GCM (NIST SP 800-38D) authenticates the ciphertext together with
associated data - the caller passes the rest of the export document - so a wrong passphrase, a
flipped byte in the ciphertext and an edited field anywhere in the document all fail alike.

The sealed envelope is plain JSON (base64 strings), so it can sit inside the export document.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from mailgate.domain.errors import EnvelopeError

CIPHER = "AES-256-GCM"
KDF = "scrypt"
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
# A document names its own KDF cost; cap it so a crafted file cannot make an import allocate
# gigabytes (memory is 128 * n * r bytes) or spin for minutes.
MAX_SCRYPT_N = 2**18
MAX_SCRYPT_R = 16
MAX_SCRYPT_P = 4


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"{what} is not valid base64") from exc


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=n, r=r, p=p)
    return kdf.derive(passphrase.encode("utf-8"))


def seal(passphrase: str, plaintext: bytes, associated_data: bytes) -> dict[str, Any]:
    """Encrypt ``plaintext`` under ``passphrase``, bound to ``associated_data``."""
    salt = os.urandom(16)
    nonce = os.urandom(12)
    key = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    sealed = AESGCM(key).encrypt(nonce, plaintext, associated_data)
    # Salt, cost and nonce need no authentication of their own: changing any of them yields
    # another key or nonce, and the tag check fails.
    return {
        "kdf": {"name": KDF, "salt": _b64(salt), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
        "cipher": CIPHER,
        "nonce": _b64(nonce),
        "ciphertext": _b64(sealed),
    }


def open_sealed(passphrase: str, envelope: Any, associated_data: bytes) -> bytes:
    """Decrypt an envelope made by ``seal``; raise ``EnvelopeError`` on any mismatch."""
    if not isinstance(envelope, dict):
        raise EnvelopeError("the secrets section must be an object")
    kdf = envelope.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != KDF:
        raise EnvelopeError(f"unsupported key derivation (expected {KDF})")
    if envelope.get("cipher") != CIPHER:
        raise EnvelopeError(f"unsupported cipher (expected {CIPHER})")
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    if not all(type(v) is int for v in (n, r, p)):
        raise EnvelopeError("scrypt parameters n, r and p must be integers")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    if not (2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= MAX_SCRYPT_R):
        raise EnvelopeError("scrypt parameters out of range")
    if not 1 <= p <= MAX_SCRYPT_P:
        raise EnvelopeError("scrypt parameters out of range")
    salt = _unb64(kdf.get("salt"), "salt")
    nonce = _unb64(envelope.get("nonce"), "nonce")
    sealed = _unb64(envelope.get("ciphertext"), "ciphertext")
    if len(salt) < 16 or len(nonce) != 12 or len(sealed) < 16:
        raise EnvelopeError("salt, nonce or ciphertext has the wrong length")
    key = _derive(passphrase, salt, n, r, p)
    try:
        return AESGCM(key).decrypt(nonce, sealed, associated_data)
    except InvalidTag as exc:
        raise EnvelopeError(
            "the passphrase is wrong, or the document was changed after it was exported"
        ) from exc


class ScryptEnvelope:
    """``seal`` and ``open_sealed`` as the ``ports.PassphraseEnvelope`` the export uses."""

    def seal(self, passphrase: str, plaintext: bytes, associated_data: bytes) -> dict[str, Any]:
        return seal(passphrase, plaintext, associated_data)

    def open(self, passphrase: str, envelope: Any, associated_data: bytes) -> bytes:
        return open_sealed(passphrase, envelope, associated_data)
