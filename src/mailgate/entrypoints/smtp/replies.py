"""SMTP replies of the submission listener: one place that turns an outcome into a reply.

Enhanced status codes are RFC 3463's; the texts name what to fix. A reply never contains
a secret (the API key is nowhere in an error's detail) and is one line of printable ASCII.
"""

from __future__ import annotations

from mailgate.domain.errors import (
    Forbidden,
    MailgateError,
    NotFound,
    PayloadTooLarge,
    Throttled,
    Unauthenticated,
    ValidationFailed,
)
from mailgate.services.submission import UnknownServer

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_UNAVAILABLE = "454 4.7.0 temporary authentication failure; try again later"
STORE_FAILED = "451 4.3.0 the message could not be stored; try again later"
TOO_MANY_CONNECTIONS = "421 4.3.2 too many connections; try again later"
TOO_MANY_FROM_CLIENT = "421 4.7.0 too many connections from your address; try again later"
SHUTTING_DOWN = "421 4.3.2 mailgate is shutting down; try again later"
TOO_MANY_RECIPIENTS = "452 4.5.3 too many recipients"
MAX_REPLY_TEXT = 400


def queued(message_id: str) -> str:
    return f"250 2.0.0 queued as {message_id}"


def too_large(limit: int) -> str:
    return f"552 5.3.4 the message is larger than the limit of {limit} bytes"


def throttled(exc: Throttled) -> str:
    return f"454 4.7.0 too many failed authentications; try again in {exc.retry_after_s} s"


def bad_address(detail: str) -> str:
    return f"553 5.1.3 {clean(detail)}"


def for_refusal(exc: MailgateError) -> str:
    """The reply to ``DATA`` for a message the services refused."""
    if isinstance(exc, PayloadTooLarge):
        return f"552 5.3.4 {clean(exc.detail)}"
    if isinstance(exc, UnknownServer):
        # The configuration named by X-Mailgate-Server (or the default) does not exist.
        return f"550 5.3.5 unknown configuration: {clean(exc.detail)}"
    if isinstance(exc, ValidationFailed):
        return f"554 5.6.0 {clean(exc.detail)}"
    if isinstance(exc, Unauthenticated | Forbidden | NotFound):
        # Since AUTH the key was revoked, lost its right to send, or the tenant is gone.
        return f"554 5.7.1 not allowed to send: {clean(exc.detail)}"
    return STORE_FAILED


def clean(text: str) -> str:
    """One line of printable ASCII, short enough for any client."""
    text = " ".join(text.split())
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    if len(text) > MAX_REPLY_TEXT:
        text = text[: MAX_REPLY_TEXT - 3] + "..."
    return text
