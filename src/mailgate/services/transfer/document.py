"""The export document of a tenant's configuration (README "Export and import a tenant"): its
format and versions, and the checks that need no database.

The document (format version 1)::

    {
      "format": "mailgate-tenant-export", "format_version": 1, "generator": "mailgate 0.1.0",
      "source": {"installation_id": "...", "public_base_url": "...", "tenant": "acme"},
      "exported_at": "2026-01-01T00:00:00Z", "exported_by": "admin",
      "resources": ["email-servers", "remote-clients"],
      "email_servers": [{"name": "DEFAULT", "is_default": true, ...every public field...}],
      "remote_clients": [{"name": "plant-1"}],
      "secrets": null,            # or the passphrase envelope (ports.PassphraseEnvelope)
      "not_exported": [{"resource": "email-servers", "name": "DEFAULT",
                        "field": "authentication.password", "reason": "..."}]
    }

Secrets (passwords, client secrets, client keys, OAuth2 tokens) travel only inside the
envelope, sealed with the rest of the document as associated data: with a passphrase, any edit
of the file is detected. Remote client tokens are stored as hashes and can never be exported.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailgate.domain.errors import BadRequest, ValidationFailed
from mailgate.schemas.common import ObjectName, StrictModel
from mailgate.schemas.email_server import pydantic_field_errors

FORMAT = "mailgate-tenant-export"
FORMAT_VERSION = 1
RESOURCES = ("email-servers", "remote-clients")
PASSPHRASE_HEADER = "X-Export-Passphrase"
MIN_PASSPHRASE_CHARS = 8

# Where each secret sits in a configuration (for field names in warnings and errors).
SECRET_PATHS = {
    "password": ("authentication", "password"),
    "client_secret": ("authentication", "client_secret"),
    "client_key_pem": ("tls", "client_key_pem"),
}


class ImportRefused(BadRequest):
    title = "Import refused"


class SecretsLocked(BadRequest):
    title = "Secrets cannot be decrypted"


class RemoteClientDoc(StrictModel):
    name: ObjectName


class Document(BaseModel):
    """Shape of a format-1 document. Server entries are checked one by one afterwards, so that
    their errors carry the API's field names."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["mailgate-tenant-export"]
    format_version: Literal[1]
    generator: str | None = Field(default=None, max_length=200)
    source: dict[str, Any] | None = None
    exported_at: str | None = Field(default=None, max_length=64)
    exported_by: str | None = Field(default=None, max_length=200)
    resources: list[str] | None = None
    email_servers: list[dict[str, Any]] | None = Field(default=None, max_length=1000)
    remote_clients: list[RemoteClientDoc] | None = Field(default=None, max_length=1000)
    secrets: dict[str, Any] | None = None
    not_exported: list[dict[str, Any]] | None = None


def parse_resources(value: str | None) -> list[str]:
    """``email-servers,remote-clients`` -> a list in canonical order; empty means all."""
    if value is None or not value.strip():
        return list(RESOURCES)
    wanted = {part.strip() for part in value.split(",") if part.strip()}
    unknown = sorted(wanted - set(RESOURCES))
    if unknown:
        raise ValidationFailed.one(
            "resources", f"unknown resource {unknown[0]!r}; choose from {', '.join(RESOURCES)}"
        )
    return [r for r in RESOURCES if r in wanted]


def check_passphrase(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) < MIN_PASSPHRASE_CHARS:
        raise ValidationFailed.one(
            PASSPHRASE_HEADER,
            f"use a passphrase of at least {MIN_PASSPHRASE_CHARS} characters",
        )
    return value


def canonical(value: Any) -> bytes:
    """One byte string per JSON value, whatever the key order or spacing of the file."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def associated_data(document: dict[str, Any]) -> bytes:
    """What the secrets envelope is bound to: the whole document but the envelope."""
    try:
        return canonical({k: v for k, v in document.items() if k != "secrets"})
    except ValueError:  # NaN or Infinity smuggled into the JSON
        raise ValidationFailed.one("body", "numbers must be finite") from None


def check_document(raw: Any) -> Document:
    """Format and version first (so a newer file says so), then the shape."""
    if not isinstance(raw, dict):
        raise ValidationFailed.one("body", "an export document (a JSON object) is expected")
    if raw.get("format") != FORMAT:
        raise ValidationFailed.one("format", f"not a mailgate tenant export (expected {FORMAT!r})")
    version = raw.get("format_version")
    if type(version) is not int:
        raise ValidationFailed.one("format_version", "missing or not an integer")
    if version > FORMAT_VERSION:
        raise ValidationFailed.one(
            "format_version",
            f"this document has format version {version}, written by a newer mailgate; "
            f"this installation reads version {FORMAT_VERSION}. Upgrade mailgate first.",
        )
    if version != FORMAT_VERSION:
        raise ValidationFailed.one(
            "format_version",
            f"unknown format version {version}; this installation reads version {FORMAT_VERSION}",
        )
    try:
        return Document.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed(pydantic_field_errors(exc)) from None


def secrets_layout(plaintext: bytes) -> dict[str, dict[str, Any]]:
    """The opened envelope: e-mail server name -> its secrets."""
    try:
        opened = json.loads(plaintext)
        servers = opened["email-servers"]
        if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in servers.values()):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ImportRefused("the secrets section has an unknown layout") from None
    return servers


def cleartext_secrets(entry: dict[str, Any]) -> list[str]:
    """Secret fields an entry carries outside the envelope (refused: they belong inside)."""
    found = []
    for section, key in SECRET_PATHS.values():
        part = entry.get(section)
        if isinstance(part, dict) and part.get(key) is not None:
            found.append(f"{section}.{key}")
    return found


def with_secrets(entry: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The entry with its decrypted secrets in place, so the API's model validates them."""
    out = dict(entry)
    for key, (section, attr) in SECRET_PATHS.items():
        value = given.get(key)
        if value is None:
            continue
        part = out.get(section)
        if part is None:
            part = {}
        if isinstance(part, dict):
            out[section] = {**part, attr: value}
    return out


def parse_oauth2(value: Any, what: str) -> dict[str, Any] | None:
    """An entry's OAuth2 tokens from the envelope, with its timestamps as datetimes."""
    if value is None:
        return None
    try:
        tokens = value["tokens"]
        if not isinstance(tokens, dict):
            raise TypeError
        out: dict[str, Any] = {"tokens": tokens}
        for key in ("access_token_expires_at", "refresh_token_last_used_at"):
            stamp = value.get(key)
            out[key] = datetime.fromisoformat(stamp) if stamp else None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ImportRefused(f"{what} have an unknown layout") from None
    return out
