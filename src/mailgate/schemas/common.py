"""Reusable validated types for the API and the services.

Pydantic checks shape and types; semantic rules that name a field live next to the model
they belong to and raise ``ValidationFailed`` with ``FieldError``s.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationInfo,
)

from mailgate.domain.headers import check_header_value

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# RFC 5322 3.6.8: a field name is printable US-ASCII except colon.
_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,76}$")


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo in a field name must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def is_hostname(value: str) -> bool:
    if not value or len(value) > 253:
        return False
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    # RFC 3696 section 2: a top-level domain is never all-numeric, so "10.0.0.999" is a
    # mistyped address, not a name.
    if labels[-1].isdigit():
        return False
    return all(_LABEL.match(label) for label in labels)


def check_hostname(value: str) -> str:
    if not is_hostname(value):
        raise ValueError("not a valid host name or IP address")
    return value


def check_no_crlf(value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError("must not contain line breaks or NUL characters")
    return value


def normalize_email(value: str) -> str:
    """Validate syntax (no DNS lookups: the gateway may not see the recipient's DNS)."""
    check_no_crlf(value)
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address: {exc}") from exc
    return result.normalized


def check_header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError("header names are printable ASCII without spaces or colons")
    return value


def check_tenant_name(value: str) -> str:
    if not TENANT_NAME.match(value):
        raise ValueError(
            "use 1-63 lower-case letters, digits and '-', starting with a letter/digit"
        )
    return value


Hostname = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(check_hostname)]
EmailAddress = Annotated[str, StringConstraints(max_length=320), AfterValidator(normalize_email)]
SingleLine = Annotated[str, StringConstraints(max_length=998), AfterValidator(check_no_crlf)]
HeaderName = Annotated[str, AfterValidator(check_header_name)]
STORED = {"stored": True}
"""Validation context for data read back from the database: checks added later (header
injection) must not make an existing row unreadable; the code that uses such a value
checks it again where it matters (``services/outbox/mime.py``)."""


def _header_text(value: str, info: ValidationInfo) -> str:
    if isinstance(info.context, dict) and info.context.get("stored"):
        return value
    return check_header_value(value)


HeaderText = Annotated[str, StringConstraints(max_length=998), AfterValidator(_header_text)]
"""A value that becomes (part of) a message header: no control characters, also not
inside RFC 2047 encoded words (``domain/headers.py``)."""
TenantName = Annotated[str, AfterValidator(check_tenant_name)]
# Names appear in URLs (/email-servers/{name}); keep them URL-safe and readable.
ObjectName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"
    ),
]


LATEST_SEND_AT = datetime(9000, 1, 1, tzinfo=UTC)


def check_send_at(value: datetime) -> datetime:
    """A schedule time mailgate can store and compute with: from 1970 to the year 9000 (a
    date at the end of the calendar overflowed when its expiry was computed: a 500)."""
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("outside the supported range of dates") from None
    if utc.year < 1970:
        raise ValueError("must not be before 1970")
    if utc >= LATEST_SEND_AT:
        raise ValueError("must be before the year 9000")
    return utc


SendAt = Annotated[AwareDatetime, AfterValidator(check_send_at)]
"""When to send: an aware date-time within the supported range (``check_send_at``)."""


def in_utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)
