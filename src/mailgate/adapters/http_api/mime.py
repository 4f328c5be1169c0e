"""The stored MIME message as the HTTP mail APIs need it. Pure functions.

- ``with_bcc``: the APIs take the recipients from the message's own headers (Graph's MIME
  ``sendMail``, Gmail's ``messages.send``), but the outbox keeps Bcc recipients only in the
  envelope. For the send, they are named in a ``Bcc`` header put in front of the message;
  the provider delivers to them and never copies that header to what the other recipients
  get ([MS-OXCMAIL] 2.1.3.1.1.2: "MIME writers MUST NOT copy Bcc recipients to the MIME Bcc
  header" for outbound SMTP; Gmail likewise strips Bcc).
- ``split_for_draft``: Graph takes at most 4 MB per request; a larger message becomes a draft
  of its text and headers, and its attachments are added one by one (``graph.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import getaddresses

_VISIBLE = ("To", "Cc", "Bcc")


def _eol(raw: bytes) -> bytes:
    first = raw.find(b"\n")
    return b"\r\n" if first > 0 and raw[first - 1 : first] == b"\r" else b"\n"


def header_recipients(raw: bytes) -> set[str]:
    """The addresses the message's To, Cc and Bcc headers name (lower-cased)."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    values = [str(v) for name in _VISIBLE for v in headers.get_all(name, [])]
    return {address.lower() for _name, address in getaddresses(values) if address}


def hidden_recipients(raw: bytes, rcpt_to: list[str]) -> list[str]:
    """Envelope recipients the headers do not name: the Bcc recipients."""
    named = header_recipients(raw)
    seen: set[str] = set()
    hidden = []
    for address in rcpt_to:
        key = address.lower()
        if key not in named and key not in seen:
            seen.add(key)
            hidden.append(address)
    return hidden


def with_bcc(raw: bytes, rcpt_to: list[str]) -> bytes:
    """The message with a ``Bcc`` header naming its hidden recipients (unchanged without)."""
    hidden = hidden_recipients(raw, rcpt_to)
    if not hidden:
        return raw
    eol = _eol(raw)
    # One address per line (folded, RFC 5322 2.2.3): no line limit trouble for many.
    header = b"Bcc: " + (b"," + eol + b" ").join(a.encode("utf-8") for a in hidden) + eol
    return header + raw


@dataclass(frozen=True)
class Attachment:
    """A part taken out of a message to be attached to its Graph draft."""

    name: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str | None = None


def _is_attachment(part: EmailMessage) -> bool:
    disposition = part.get_content_disposition()
    if disposition == "attachment":
        return True
    if part.get_content_maintype() == "text" and part.get_filename() is None:
        return False  # a body (plain, html, calendar)
    return part.get_content_maintype() != "multipart"


def _take(part: EmailMessage) -> Attachment:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload(0)
        data = inner.as_bytes() if isinstance(inner, EmailMessage) else b""
        name = part.get_filename() or "message.eml"
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        name = part.get_filename() or "attachment"
    cid = part.get("Content-ID")
    return Attachment(
        name=name,
        content_type=part.get_content_type(),
        data=data,
        inline=part.get_content_disposition() == "inline",
        content_id=str(cid).strip().strip("<>") if cid else None,
    )


def _strip(container: EmailMessage, taken: list[Attachment]) -> None:
    parts = container.get_payload()
    assert isinstance(parts, list)
    for part in list(parts):
        if not isinstance(part, EmailMessage):
            continue
        if part.get_content_type() != "message/rfc822" and part.is_multipart():
            _strip(part, taken)
        elif _is_attachment(part):
            taken.append(_take(part))
            parts.remove(part)
    if not parts:  # every part was an attachment: the draft keeps an empty text body
        body = EmailMessage()
        body.set_content("")
        parts.append(body)


def split_for_draft(raw: bytes) -> tuple[bytes, list[Attachment]]:
    """The message without its attachments (headers, text, html), and the attachments.

    A message that is not multipart has nothing to take out: it comes back whole.
    """
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    taken: list[Attachment] = []
    if message.is_multipart():
        _strip(message, taken)
    if not taken:
        return raw, []
    return message.as_bytes(policy=policy.default.clone(linesep=_eol(raw).decode())), taken
