"""Encryption at rest for secrets (passwords, client secrets, keys, OAuth2 tokens); the
``SecretBox`` implements ``ports.SecretCipher``.

AES-256-GCM (authenticated encryption) from ``cryptography``. Every ciphertext names the key
that made it (``v1.<key id>.<base64 nonce+ciphertext>``), so several keys can be configured at
once: the first encrypts, all decrypt, and ``rotate`` re-encrypts old values with the first key.
The caller passes associated data (for example ``email-server:<id>``) so that a ciphertext
copied into another row - another tenant's - fails to decrypt instead of leaking.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailgate.domain.errors import SecretKeyError

_PREFIX = "v1"


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"mailgate-key-id" + key).hexdigest()[:8]


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def parse_keys(spec: str) -> list[bytes]:
    keys: list[bytes] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError as exc:
            raise SecretKeyError("MAILGATE_SECRET_KEY: a key is not valid base64") from exc
        if len(raw) != 32:
            raise SecretKeyError(
                "MAILGATE_SECRET_KEY: each key must be 32 bytes, base64 encoded "
                "(create one with `mailgate keygen`)"
            )
        keys.append(raw)
    if not keys:
        raise SecretKeyError("MAILGATE_SECRET_KEY is empty")
    return keys


def load_or_create_key_file(path: Path) -> str:
    """Read the key file, creating it with mode 0600 on first start."""
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key + "\n")
    return key


class SecretBox:
    """Encrypts and decrypts small secrets with associated data."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("at least one key is needed")
        self._keys = {_key_id(k): AESGCM(k) for k in keys}
        self._current = _key_id(keys[0])

    @classmethod
    def from_spec(cls, spec: str) -> SecretBox:
        return cls(parse_keys(spec))

    def encrypt(self, plaintext: bytes, context: str) -> str:
        nonce = os.urandom(12)
        sealed = self._keys[self._current].encrypt(nonce, plaintext, context.encode())
        blob = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{_PREFIX}.{self._current}.{blob}"

    def decrypt(self, token: str, context: str) -> bytes:
        try:
            prefix, key_id, blob = token.split(".", 2)
        except ValueError as exc:
            raise SecretKeyError("not a mailgate ciphertext") from exc
        if prefix != _PREFIX or key_id not in self._keys:
            raise SecretKeyError(f"ciphertext made with an unknown key ({key_id})")
        try:
            raw = base64.urlsafe_b64decode(blob)
            return self._keys[key_id].decrypt(raw[:12], raw[12:], context.encode())
        except (InvalidTag, ValueError) as exc:  # binascii.Error is a ValueError
            raise SecretKeyError("ciphertext does not match its key or context") from exc

    def encrypt_json(self, value: dict[str, Any], context: str) -> str:
        return self.encrypt(json.dumps(value, separators=(",", ":")).encode(), context)

    def decrypt_json(self, token: str | None, context: str) -> dict[str, Any]:
        if not token:
            return {}
        value = json.loads(self.decrypt(token, context))
        if not isinstance(value, dict):
            raise SecretKeyError("decrypted secret is not an object")
        return value

    @property
    def current_key_id(self) -> str:
        """A short fingerprint of the key that encrypts (not the key)."""
        return self._current

    def needs_rotation(self, token: str) -> bool:
        parts = token.split(".", 2)
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise SecretKeyError("not a mailgate ciphertext")
        return parts[1] != self._current

    def rotate(self, token: str, context: str) -> str:
        return self.encrypt(self.decrypt(token, context), context)
