"""What a caller hands the outbox besides the message: who it is, and how to submit.

``SubmitOptions`` is the one value every submission path builds (the JSON API, the raw
MIME API, the CLI; next the SMTP listener of issue 18), so an option added later is a field
with a default here, not a parameter threaded through each signature: message
``metadata`` (issue 17) joins as a field that ``SubmitOptions.of`` copies from the JSON
body and the raw paths fill from their query parameters or headers; the submission's
``source`` (``api``/``smtp``) and the SMTP envelope's recipients likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from mailgate.domain.errors import ValidationFailed
from mailgate.domain.messages import Priority
from mailgate.schemas.message import MessageIn


@dataclass(frozen=True)
class Owner:
    """Who submits or looks. ``own_only``: this principal sees only its own messages - an
    API key those it submitted (``api_key_id``), a user those submitted under its name and
    no key (usernames are unique and never contain ``:``, API keys' names are
    ``apikey:...``)."""

    name: str
    api_key_id: str | None
    own_only: bool = False

    def owns(self, created_by: str | None, api_key_id: str | None) -> bool:
        """Whether a message submitted by ``created_by`` / ``api_key_id`` is this one's."""
        if self.api_key_id is not None:
            return api_key_id == self.api_key_id
        return api_key_id is None and bool(self.name) and created_by == self.name


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """How to submit a message: which e-mail server, when, how urgently, and at most once.

    A JSON request carries these in its body (``SubmitOptions.of``); a complete MIME
    message gets them from elsewhere (query parameters). ``server`` None is the tenant's
    default; ``idempotency_key`` set means a repeat returns the first message.
    """

    server: str | None = None
    hold: bool = False
    send_at: datetime | None = None
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    metadata: Mapping[str, str] | None = None
    """Checked already (``domain.metadata``); None or empty: none."""
    source: str = "api"
    """How the message came in: ``api`` (HTTP, the CLI) or ``smtp`` (the listener)."""
    rcpt_to: tuple[str, ...] | None = None
    """The SMTP envelope's recipients (normalized): a complete MIME message is sent to these
    instead of the addresses in its To/Cc/Bcc headers (so Bcc over SMTP works)."""

    @classmethod
    def of(cls, body: MessageIn, idempotency_header: str | None = None) -> SubmitOptions:
        """The options of a JSON request; its key may also come as the header."""
        return cls(
            body.server,
            body.hold,
            body.send_at,
            body.priority,
            idempotency_key(body.idempotency_key, idempotency_header),
            body.metadata,
        )


def idempotency_key(from_body: str | None, from_header: str | None) -> str | None:
    """The request's key: the ``Idempotency-Key`` header (checked here; the body's is
    checked by its schema), which must agree with the body's if both are given."""
    if from_header is not None:
        from_header = from_header.strip()
        if not from_header or len(from_header) > 200 or not from_header.isprintable():
            raise ValidationFailed.one(
                "Idempotency-Key", "1 to 200 printable characters are expected"
            )
        if from_body is not None and from_body != from_header:
            raise ValidationFailed.one("idempotency_key", "differs from the Idempotency-Key header")
        return from_header
    return from_body
