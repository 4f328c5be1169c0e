"""The messages API (README "Sending mail"): the send and bulk action requests, and the
answers (``*Out``; FastAPI validates and documents them)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from mailgate.domain.messages import Priority, Status
from mailgate.schemas.common import (
    EmailAddress,
    HeaderName,
    ObjectName,
    SingleLine,
    StrictModel,
    UtcTimestamp,
    check_no_crlf,
)

# Bodies keep their whitespace (the model strips strings by default).
Body = Annotated[str, StringConstraints(strip_whitespace=False, max_length=25 * 1024 * 1024)]
MimeType = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        max_length=255,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$",
    ),
]
DisplayName = Annotated[str, StringConstraints(max_length=200)]
# Headers built from request fields; setting them through "headers" would bypass validation.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
    }
)


class AddressIn(StrictModel):
    address: EmailAddress
    name: DisplayName | None = None

    @field_validator("name")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        return None if value is None else check_no_crlf(value)


Address = EmailAddress | AddressIn


class AttachmentIn(StrictModel):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content_type: MimeType = "application/octet-stream"
    content_base64: Annotated[str, StringConstraints(strip_whitespace=False)]

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        check_no_crlf(value)
        if "/" in value or "\\" in value:
            raise ValueError("a file name, not a path")
        return value


class MessageIn(StrictModel):
    server: ObjectName | None = None
    from_: Address | None = Field(default=None, alias="from")
    to: list[Address] = Field(default_factory=list, max_length=1000)
    cc: list[Address] = Field(default_factory=list, max_length=1000)
    bcc: list[Address] = Field(default_factory=list, max_length=1000)
    reply_to: list[Address] = Field(default_factory=list, max_length=100)
    subject: SingleLine | None = None
    text: Body | None = None
    html: Body | None = None
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)
    headers: dict[HeaderName, SingleLine] = Field(default_factory=dict, max_length=100)
    hold: bool = False
    send_at: AwareDatetime | None = None
    priority: Priority = Priority.NORMAL
    idempotency_key: (
        Annotated[SingleLine, StringConstraints(min_length=1, max_length=200)] | None
    ) = None

    model_config = {"populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _reply_to_scalar(cls, data: Any) -> Any:
        # A single reply-to address is common; accept it as well as a list.
        if isinstance(data, dict) and isinstance(data.get("reply_to"), str | dict):
            data = {**data, "reply_to": [data["reply_to"]]}
        return data

    @field_validator("headers")
    @classmethod
    def _no_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(
                    f"{name!r} is set from its own field (from, to, cc, subject, ...), "
                    "not through headers"
                )
        return value


class BulkIn(StrictModel):
    """Either ``ids`` or a filter (``status``, ``server``)."""

    ids: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        default=None, max_length=10_000
    )
    status: Status | None = None
    server: ObjectName | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> BulkIn:
        if self.ids is None and self.status is None and self.server is None:
            raise ValueError("give 'ids', or a filter with 'status' and/or 'server'")
        if self.ids is not None and (self.status is not None or self.server is not None):
            raise ValueError("give either 'ids' or a filter, not both")
        return self


# ---- answers ---------------------------------------------------------------------------------


class OutModel(BaseModel):
    """An answer: built by the service from its rows, written by alias (``from``)."""

    model_config = ConfigDict(populate_by_name=True)


class SubmittedOut(OutModel):
    """``202``: stored durably, and will be delivered (or the first message of a repeated
    idempotency key, as it is now)."""

    id: str
    status: Status


class MessageSummaryOut(OutModel):
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


class EnvelopeOut(OutModel):
    mail_from: str
    rcpt_to: list[str]


class HeadersOut(OutModel):
    """The stored message's main headers, decoded (null: the message has none)."""

    from_: str | None = Field(alias="From")
    to: str | None = Field(alias="To")
    cc: str | None = Field(alias="Cc")
    reply_to: str | None = Field(alias="Reply-To")
    subject: str | None = Field(alias="Subject")
    date: str | None = Field(alias="Date")
    message_id: str | None = Field(alias="Message-ID")


class RecipientStateOut(OutModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(description="delivered | refused (permanently) | pending")
    code: int | None = Field(description="The server's reply code to this recipient.")
    text: str


class AttemptRecipientOut(OutModel):
    model_config = ConfigDict(extra="allow")

    outcome: str = Field(description="delivered | temporary | permanent")
    code: int | None
    text: str


class AttemptOut(OutModel):
    at: UtcTimestamp
    outcome: str = Field(description="delivered | deferred | failed")
    smtp_code: int | None
    smtp_response: str | None
    ms: int
    recipients: dict[str, AttemptRecipientOut] | None = Field(
        description="Per recipient, when the server answered them differently (else null)."
    )


class MessageOut(MessageSummaryOut):
    """One message: its envelope, headers, recipients' state and every attempt."""

    envelope: EnvelopeOut
    headers: HeadersOut
    updated_at: UtcTimestamp
    expires_at: UtcTimestamp
    created_by: str | None
    recipients: dict[str, RecipientStateOut] | None = Field(
        description="Per recipient, once they fared differently (else null)."
    )
    attempts: list[AttemptOut]


class MessagePageOut(OutModel):
    items: list[MessageSummaryOut]
    next_cursor: str | None = Field(description="The next page's cursor; null on the last page.")


class BulkSkipOut(OutModel):
    id: str
    reason: str


class BulkOut(OutModel):
    changed: int
    ids: list[str] = Field(description="The messages changed.")
    skipped: list[BulkSkipOut] = Field(description="Ids given but not changed, and why.")
