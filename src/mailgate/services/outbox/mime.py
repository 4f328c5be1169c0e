"""A submission as the MIME message that is stored and sent.

``build_mime`` turns a JSON request, with the e-mail server's defaults for what it leaves
out, into MIME; ``prepare_raw`` takes a complete message from the client. Both return the
bytes with the envelope (``mail_from``, ``rcpt_to``) read from them. The common simple
message is written by ``simple_mime`` (the same bytes as the standard library, a fraction
of the CPU).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy as email_policy
from email.errors import MessageError
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, make_msgid

from mailgate.domain.errors import FieldError, ValidationFailed
from mailgate.domain.headers import header_value_problem
from mailgate.schemas.common import normalize_email
from mailgate.schemas.email_server import MessageDefaults
from mailgate.schemas.message import Address, AddressIn, MessageIn
from mailgate.services.outbox.simple_mime import render as render_simple

_FOLD = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class BuiltMessage:
    raw: bytes
    mail_from: str
    rcpt_to: list[str]
    subject: str | None
    message_id: str | None


def _address(value: Address) -> tuple[str, str | None]:
    if isinstance(value, AddressIn):
        return value.address, value.name
    return value, None


def _header_address(value: Address) -> HeaderAddress:
    addr, name = _address(value)
    return HeaderAddress(display_name=name or "", addr_spec=addr)


def _date_header(now: datetime) -> str:
    """``format_datetime(now)`` (whole seconds), formatted once per second, not per message."""
    return _date_of_second(int(now.timestamp()), now.utcoffset())


@functools.lru_cache(maxsize=8)
def _date_of_second(second: int, offset: timedelta | None) -> str:
    return format_datetime(datetime.fromtimestamp(second, timezone(offset or timedelta(0))))


def _msgid(mail_from: str) -> str:
    # make_msgid() without a domain asks DNS for the FQDN on every call: use the sender's.
    return make_msgid(domain=mail_from.rpartition("@")[2] or "mailgate.invalid")


def build_mime(
    body: MessageIn, defaults: MessageDefaults, now: datetime, *, fast: bool = True
) -> BuiltMessage:
    """The request, with the configuration's defaults for what it leaves out, as MIME.

    The common simple message is written by ``simple_mime`` (the same bytes, a fraction of
    the CPU); ``fast=False`` always uses the standard library (the reference in tests)."""
    errors: list[FieldError] = []
    sender: Address | None = body.from_
    if sender is None and defaults.from_address:
        # Validated with the configuration: no second pass through email-validator.
        sender = AddressIn.model_construct(address=defaults.from_address, name=defaults.from_name)
    if sender is None:
        errors.append(FieldError("from", "required (the server has no default from_address)"))
    cc: list[Address] = list(body.cc) or list(defaults.cc)
    bcc: list[Address] = list(body.bcc) or list(defaults.bcc)
    if not (body.to or cc or bcc):
        errors.append(FieldError("to", "at least one recipient (to, cc or bcc) is required"))
    decoded: list[bytes] = []
    for i, att in enumerate(body.attachments):
        try:
            decoded.append(base64.b64decode("".join(att.content_base64.split()), validate=True))
        except (binascii.Error, ValueError):
            errors.append(FieldError(f"attachments.{i}.content_base64", "not valid base64"))
    subject = body.subject if body.subject is not None else defaults.subject
    headers = {**defaults.headers, **body.headers}
    # The request was checked when it was parsed; the defaults were checked when they were
    # saved, unless they were saved before that check existed: check what is used here.
    checks = [("subject" if body.subject is not None else "message_defaults.subject", subject)]
    if body.from_ is None:
        checks.append(("message_defaults.from_name", defaults.from_name))
    checks += [
        (f"{'headers' if k in body.headers else 'message_defaults.headers'}.{k}", v)
        for k, v in headers.items()
    ]
    checks += [(f"attachments.{i}.filename", a.filename) for i, a in enumerate(body.attachments)]
    for field, value in checks:
        if value is not None and (problem := header_value_problem(value)) is not None:
            errors.append(FieldError(field, problem))
    if errors:
        raise ValidationFailed(errors)
    assert sender is not None
    reply_to: list[Address] = list(body.reply_to)
    if not reply_to and defaults.reply_to:
        reply_to = [defaults.reply_to]
    text = body.text
    html = body.html
    if text is None and html is None:
        text, html = defaults.body_text, defaults.body_html

    mail_from = defaults.envelope_from or _address(sender)[0]
    rcpts = _unique([_address(a)[0] for a in [*body.to, *cc, *bcc]])
    date = _date_header(now)
    if fast and not body.attachments:
        message_id = None
        if not any(k.lower() == "message-id" for k in headers):
            message_id = _msgid(_address(sender)[0])
        raw = render_simple(
            sender=_address(sender),
            to=[_address(a) for a in body.to],
            cc=[_address(a) for a in cc],
            reply_to=[_address(a) for a in reply_to],
            subject=subject,
            date=date,
            message_id=message_id,
            headers=headers.items(),
            text=text,
            html=html,
        )
        if raw is not None:
            return BuiltMessage(raw, mail_from, rcpts, subject, message_id)

    msg = EmailMessage(policy=email_policy.SMTP)
    try:
        msg["From"] = _header_address(sender)
        if body.to:
            msg["To"] = [_header_address(a) for a in body.to]
        if cc:
            msg["Cc"] = [_header_address(a) for a in cc]
        if reply_to:
            msg["Reply-To"] = [_header_address(a) for a in reply_to]
        if subject is not None:
            msg["Subject"] = subject
        msg["Date"] = date
        if not any(k.lower() == "message-id" for k in headers):
            msg["Message-ID"] = _msgid(_address(sender)[0])
        for name, value in headers.items():
            try:
                msg[name] = value
            except Exception as exc:  # the parser has crashed (IndexError on "Sender: <")
                raise ValidationFailed.one(
                    f"headers.{name}", f"not a valid {name} header: {exc or type(exc).__name__}"
                ) from exc
        if text is not None and html is not None:
            msg.set_content(text)
            msg.add_alternative(html, subtype="html")
        elif html is not None:
            msg.set_content(html, subtype="html")
        else:
            msg.set_content(text or "")
        for att, data in zip(body.attachments, decoded, strict=True):
            maintype, _, subtype = att.content_type.partition("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=att.filename)
        raw = msg.as_bytes(policy=email_policy.SMTP)
    except ValidationFailed:
        raise
    except (ValueError, TypeError, LookupError, MessageError) as exc:
        # The stdlib refuses what it cannot encode safely (a patched Python raises
        # HeaderWriteError for a header that would inject a line): the request's fault.
        raise ValidationFailed.one("body", f"cannot build the message: {exc}") from exc
    return BuiltMessage(raw, mail_from, rcpts, subject, str(msg["Message-ID"] or "") or None)


MAX_LINE_OCTETS = 998
"""RFC 5322 2.1.1: a line is at most 998 octets, CRLF excluded."""
_OBS_NAME = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]+:", re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def first_long_line(raw: bytes) -> int | None:
    """Where the first run of more than 998 octets without CR or LF starts, or ``None``.

    What ``re.search(rb"[^\r\n]{999}", raw)`` finds, in linear time: that pattern tries
    999 octets at every position, 1.1 ms for a 10 KB message (half of an SMTP submission's
    CPU); ``bytes.splitlines`` splits at exactly CR, LF and CRLF (``test_raw_mime_hygiene``
    compares both)."""
    if len(raw) <= MAX_LINE_OCTETS:
        return None
    lines = raw.splitlines(keepends=True)
    if max(map(len, lines)) <= MAX_LINE_OCTETS:  # line ends included: none is longer
        return None
    offset = 0
    for line in lines:
        if len(line.rstrip(b"\r\n")) > MAX_LINE_OCTETS:
            return offset
        offset += len(line)
    return None


def _raw_problems(raw: bytes) -> list[FieldError]:
    """What no SMTP server may be sent: NUL bytes, lines over 998 octets (RFC 5322 2.1.1;
    servers cut or refuse them, which breaks signatures and, cut in a header, can make a
    header of the rest)."""
    errors = []
    if b"\x00" in raw:
        errors.append(
            FieldError("body", "the message contains NUL bytes: encode binary parts (base64)")
        )
    if (long := first_long_line(raw)) is not None:
        line = raw.count(b"\n", 0, long) + 1
        errors.append(
            FieldError(
                "body",
                f"line {line} is longer than 998 octets (RFC 5322 2.1.1): fold the header or "
                "encode the part (quoted-printable or base64)",
            )
        )
    return errors


def _normalize_names(raw: bytes) -> bytes:
    """``Bcc :`` (obsolete syntax, RFC 5322 4.5.3: white space before the colon) is the Bcc
    header. Python's parser would end the header section at such a line and deliver it (and
    every header after it) as body text - a Bcc shown to every recipient: strip the space."""
    end = _HEADER_END.search(raw)
    head = raw[: end.start()] if end else raw
    fixed = _OBS_NAME.sub(rb"\1:", head)
    return raw if fixed == head else fixed + raw[len(head) :]


def prepare_raw(
    raw: bytes,
    defaults: MessageDefaults,
    now: datetime,
    *,
    rcpt_to: Sequence[str] | None = None,
    headers_only: bool = True,
) -> BuiltMessage:
    """A complete message from the client: envelope from its headers, Bcc removed.
    ``headers_only`` False parses the whole message even without Bcc (the reference in
    tests).

    ``rcpt_to`` (the SMTP envelope's recipients, already normalized) replaces the
    recipients of the headers, which are then not read: ``To: undisclosed-recipients:;`` is
    a valid header of a message sent to Bcc recipients only."""
    problems = _raw_problems(raw)
    if problems:
        raise ValidationFailed(problems)
    raw = _normalize_names(raw)
    # The headers are all that is read, unless Bcc must come out (then the message is
    # written again from the parse): parsing the body too was a quarter of an SMTP
    # submission's CPU (the headers parse the same either way; a test compares both).
    msg = BytesParser(policy=email_policy.default).parsebytes(raw, headersonly=headers_only)
    if headers_only and msg["Bcc"] is not None:
        msg = BytesParser(policy=email_policy.default).parsebytes(raw)
    errors: list[FieldError] = []
    senders = getaddresses([str(v) for v in msg.get_all("From", [])])
    mail_from = defaults.envelope_from or (senders[0][1] if senders else defaults.from_address)
    if not mail_from:
        errors.append(FieldError("From", "the message has no From header"))
    rcpts: list[str] = list(rcpt_to or ())
    for name in ("To", "Cc", "Bcc") if rcpt_to is None else ():
        for _display, addr in getaddresses([str(v) for v in msg.get_all(name, [])]):
            try:
                rcpts.append(normalize_email(addr))
            except ValueError as exc:
                errors.append(FieldError(name, f"{addr!r}: {exc}"))
    if not rcpts and not errors:
        errors.append(FieldError("To", "the message names no recipient (To, Cc or Bcc)"))
    if mail_from:
        try:
            mail_from = normalize_email(mail_from)
        except ValueError as exc:
            errors.append(FieldError("From", str(exc)))
    for name, value in msg.raw_items():
        # As sent, unfolded: re-serializing (for Bcc, or a long line) decodes encoded words.
        problem = header_value_problem(_FOLD.sub("", value))
        if problem is not None:
            errors.append(FieldError(name, problem))
    if len(str(msg["Message-ID"] or "")) > 998:
        errors.append(FieldError("Message-ID", "longer than 998 characters (RFC 5322 2.1.1)"))
    if errors:
        raise ValidationFailed(errors)
    assert mail_from is not None
    message_id = msg["Message-ID"]
    extra = b""
    if msg["Date"] is None:
        extra += f"Date: {format_datetime(now)}\r\n".encode()
    if message_id is None:
        message_id = _msgid(mail_from)
        extra += f"Message-ID: {message_id}\r\n".encode()
    if msg["Bcc"] is not None:
        del msg["Bcc"]
        try:
            data = msg.as_bytes(policy=email_policy.SMTP)
        except (ValueError, TypeError, LookupError, MessageError) as exc:
            raise ValidationFailed.one("body", f"cannot write the message: {exc}") from exc
    elif raw.count(b"\n") == raw.count(b"\r\n"):
        data = raw  # every line ends with CRLF already (what the substitution would give)
    else:
        data = re.sub(rb"\r?\n", b"\r\n", raw)
    subject = msg["Subject"]
    return BuiltMessage(
        extra + data,
        mail_from,
        _unique(rcpts),
        str(subject) if subject is not None else None,
        str(message_id),
    )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
