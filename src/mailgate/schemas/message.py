"""The messages API (README "Sending mail"): the send and bulk action requests. The answers
are in ``schemas/out/message.py``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from mailgate.domain.headers import check_header_value
from mailgate.domain.messages import Priority, Status
from mailgate.domain.metadata import metadata_errors
from mailgate.schemas.common import (
    EmailAddress,
    HeaderName,
    HeaderText,
    ObjectName,
    SendAt,
    SingleLine,
    StrictModel,
)


def _no_nul(value: str) -> str:
    # RFC 5322 2.3 / RFC 2045 2.7: no NUL in text; SMTP servers refuse or mangle it.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (send binary data as an attachment)")
    return value


# Bodies keep their whitespace (the model strips strings by default).
Body = Annotated[
    str,
    StringConstraints(strip_whitespace=False, max_length=25 * 1024 * 1024),
    AfterValidator(_no_nul),
]
MimeType = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        max_length=255,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$",
    ),
]
DisplayName = Annotated[HeaderText, StringConstraints(max_length=200)]
# Metadata values are the caller's own: kept exactly as given (no stripping).
MetadataValue = Annotated[str, StringConstraints(strip_whitespace=False)]
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


Address = EmailAddress | AddressIn


class AttachmentIn(StrictModel):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content_type: MimeType = "application/octet-stream"
    content_base64: Annotated[str, StringConstraints(strip_whitespace=False)]

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        # It becomes a Content-Disposition parameter: an encoded word in it is decoded when
        # the header is written (a line break there starts a header of the sender's choice).
        check_header_value(value)
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
    subject: HeaderText | None = None
    text: Body | None = None
    html: Body | None = None
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)
    headers: dict[HeaderName, HeaderText] = Field(default_factory=dict, max_length=100)
    hold: bool = False
    send_at: SendAt | None = None
    priority: Priority = Priority.NORMAL
    idempotency_key: (
        Annotated[SingleLine, StringConstraints(min_length=1, max_length=200)] | None
    ) = None
    metadata: dict[str, MetadataValue] | None = Field(
        default=None,
        description="The caller's own string keys and values (at most 20 pairs, 2 KB), "
        "returned with the message, filterable, and included in its events.",
    )

    model_config = {"populate_by_name": True}

    @model_validator(mode="before")
    @classmethod
    def _reply_to_scalar(cls, data: Any) -> Any:
        # A single reply-to address is common; accept it as well as a list.
        if isinstance(data, dict) and isinstance(data.get("reply_to"), str | dict):
            data = {**data, "reply_to": [data["reply_to"]]}
        return data

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        errors = metadata_errors(value)
        if errors:
            e = errors[0]
            where = e.field.removeprefix("metadata").removeprefix(".")
            raise ValueError(f"{where!r}: {e.message}" if where else e.message)
        return value or None

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
