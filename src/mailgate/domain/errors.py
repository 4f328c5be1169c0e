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
