"""Answers of the messages API. The outbox's queries build these from their rows directly
(no intermediate dict), so they use ``RowOutModel``; FastAPI documents them."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from mailgate.domain.messages import Priority, Status
from mailgate.schemas.out.base import RowOutModel, UtcTimestamp


class SubmittedOut(RowOutModel):
    """``202``: stored durably, and will be delivered (or the first message of a repeated
    idempotency key, as it is now)."""

    id: str
    status: Status


class MessageSummaryOut(RowOutModel):
    """A message in the list, and the answer to steering one message."""

    id: str
    status: Status
    server: str
    priority: Priority
    from_: str = Field(alias="from", description="The envelope sender (MAIL FROM).")
    to: list[str] = Field(description="The envelope recipients (RCPT TO), Bcc included.")
    subject: str | None
    size_bytes: int
    created_at: UtcTimestamp
    send_at: UtcTimestamp | None
    next_attempt_at: UtcTimestamp | None = Field(
        description="When the next attempt is due (held, sending and final messages: null)."
    )
    attempt_count: int
    last_error: str | None
    metadata: dict[str, str] = Field(
        description="The caller's own keys and values given at submission ({}: none)."
    )
    source: Literal["api", "smtp"] = Field(
        description="How the message came in: the HTTP API (or the CLI), or SMTP submission."
    )


class EnvelopeOut(RowOutModel):
    mail_from: str
    rcpt_to: list[str]


class HeadersOut(RowOutModel):
    """The stored message's main headers, decoded (null: the message has none)."""

    from_: str | None = Field(alias="From")
    to: str | None = Field(alias="To")
    cc: str | None = Field(alias="Cc")
    reply_to: str | None = Field(alias="Reply-To")
    subject: str | None = Field(alias="Subject")
    date: str | None = Field(alias="Date")
    message_id: str | None = Field(alias="Message-ID")


class AttachmentOut(RowOutModel):
    filename: str | None
    content_type: str
    size_bytes: int = Field(description="Decoded size (the MIME encoding adds about a third).")


class RecipientStateOut(RowOutModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(description="delivered | refused (permanently) | pending")
    code: int | None = Field(description="The server's reply code to this recipient.")
    text: str


class AttemptRecipientOut(RowOutModel):
    model_config = ConfigDict(extra="allow")

    outcome: str = Field(description="delivered | temporary | permanent")
    code: int | None
    text: str


class AttemptOut(RowOutModel):
    at: UtcTimestamp
    outcome: str = Field(description="delivered | deferred | failed")
    smtp_code: int | None
    smtp_response: str | None
    ms: int
    recipients: dict[str, AttemptRecipientOut] | None = Field(
        description="Per recipient, when the server answered them differently (else null)."
    )
    possibly_delivered: bool = Field(
        description="The outcome is unknown and the server may have the message (no reply "
        "after its end, or the worker stopped during the attempt): a later attempt may "
        "reach the recipients a second time."
    )


class MessageOut(MessageSummaryOut):
    """One message: its envelope, headers, recipients' state and every attempt."""

    envelope: EnvelopeOut
    headers: HeadersOut
    attachments: list[AttachmentOut] = Field(
        description="The stored message's attachments (parts with a file name)."
    )
    updated_at: UtcTimestamp
    expires_at: UtcTimestamp
    created_by: str | None
    recipients: dict[str, RecipientStateOut] | None = Field(
        description="Per recipient, once they fared differently (else null)."
    )
    attempts: list[AttemptOut]


class MessagePageOut(RowOutModel):
    items: list[MessageSummaryOut]
    next_cursor: str | None = Field(description="The next page's cursor; null on the last page.")


class BulkSkipOut(RowOutModel):
    id: str
    reason: str


class BulkOut(RowOutModel):
    changed: int
    ids: list[str] = Field(description="The messages changed.")
    skipped: list[BulkSkipOut] = Field(description="Ids given but not changed, and why.")
