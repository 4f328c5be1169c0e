"""All errors that cross a layer boundary. The API maps them to problem+json.

Hierarchy::

    MailgateError
    ├── NotFound            404  (also: another tenant's resource, indistinguishable)
    ├── Conflict            409  (duplicate name, illegal status transition, default in use)
    ├── ValidationFailed    422  (carries field-level errors)
    ├── PayloadTooLarge     413
    ├── Unauthenticated     401
    ├── Forbidden           403
    ├── Throttled           429
    └── BadRequest          400  (e.g. an unknown or expired OAuth2 state)

Errors of the secret ports (``ports.SecretCipher``, ``ports.PassphraseEnvelope``), raised by
their adapters and caught by services; not API errors of their own::

    SecretKeyError          the key material is unusable, or a ciphertext does not decrypt
    EnvelopeError           an export envelope is malformed or does not open

OAuth2's errors (token unavailable, provider refusals) are in ``domain/oauth2.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class MailgateError(Exception):
    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(MailgateError):
    status = 404
    title = "Not found"


class Conflict(MailgateError):
    status = 409
    title = "Conflict"


class BadRequest(MailgateError):
    status = 400
    title = "Bad request"


class PayloadTooLarge(MailgateError):
    status = 413
    title = "Payload too large"


class Unauthenticated(MailgateError):
    status = 401
    title = "Unauthenticated"


class Forbidden(MailgateError):
    status = 403
    title = "Forbidden"


class Throttled(MailgateError):
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ValidationFailed(MailgateError):
    status = 422
    title = "Validation failed"

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field_name: str, message: str) -> ValidationFailed:
        return cls([FieldError(field_name, message)])


class SecretKeyError(Exception):
    """The configured key material is unusable, or a ciphertext does not decrypt."""


class EnvelopeError(Exception):
    """The envelope is malformed, or it does not open (wrong passphrase or tampering)."""
