"""The common message -- one text or HTML part, plain ASCII headers that need no folding --
written directly, byte for byte what the standard library's ``email`` package writes for it.

Building a message with ``EmailMessage`` and ``policy.SMTP`` costs about 1.5 ms of CPU
(every header is parsed into a header object and folded again); most messages a workflow
sends need none of that. ``render`` returns ``None`` for anything outside that narrow case
(non-ASCII or long header lines, quoted names, multipart, attachments, headers the
standard library parses specially), and the caller builds it with the standard library.
``tests/unit/test_simple_mime.py`` checks, over generated inputs, that both give the same
bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Words of RFC 5322 atext separated by single spaces: written unquoted and unencoded.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_PHRASE = re.compile(rf"{_ATEXT}+(?: {_ATEXT}+)*")
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_ADDR_SPEC = re.compile(rf"{_DOT_ATOM}@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# Printable ASCII words separated by single spaces; "=?" could start an encoded word.
_UNSTRUCTURED = re.compile(r"[!-~]+(?: [!-~]+)*")
# Headers the standard library parses into structured objects (``headerregistry``).
_STRUCTURED = frozenset(
    {
        "subject",
        "date",
        "resent-date",
        "orig-date",
        "sender",
        "resent-sender",
        "to",
        "resent-to",
        "cc",
        "resent-cc",
        "bcc",
        "resent-bcc",
        "from",
        "resent-from",
        "reply-to",
        "mime-version",
        "content-type",
        "content-disposition",
        "content-transfer-encoding",
        "message-id",
    }
)
MAX_LINE = 78  # policy.SMTP.max_line_length


def _address(addr: str, name: str | None) -> str | None:
    if not _ADDR_SPEC.fullmatch(addr) or ".." in addr.partition("@")[2]:
        return None
    if not name:
        return addr
    if not _PHRASE.fullmatch(name) or "=?" in name:
        return None
    return f"{name} <{addr}>"


def _line(name: str, value: str) -> str | None:
    line = f"{name}: {value}"
    return line if len(line) <= MAX_LINE else None


def render(
    *,
    sender: tuple[str, str | None],
    to: Sequence[tuple[str, str | None]],
    cc: Sequence[tuple[str, str | None]],
    reply_to: Sequence[tuple[str, str | None]],
    subject: str | None,
    date: str,
    message_id: str | None,
    headers: Iterable[tuple[str, str]],
    text: str | None,
    html: str | None,
) -> bytes | None:
    """The message as the standard library would write it, or ``None`` if it is not the
    simple case. ``message_id`` None means a ``Message-ID`` is among ``headers``."""
    if (text is None) == (html is None):
        return None
    out: list[str] = []
    for header, addresses in (
        ("From", [sender]),
        ("To", to),
        ("Cc", cc),
        ("Reply-To", reply_to),
    ):
        if not addresses:
            continue
        rendered = [_address(a, n) for a, n in addresses]
        if None in rendered:
            return None
        line = _line(header, ", ".join(r for r in rendered if r is not None))
        if line is None:
            return None
        out.append(line)
    if subject is not None:
        if "=?" in subject or not _UNSTRUCTURED.fullmatch(subject):
            return None
        line = _line("Subject", subject)
        if line is None:
            return None
        out.append(line)
    out.append(f"Date: {date}")
    if message_id is not None:
        line = _line("Message-ID", message_id)
        if line is None or not re.fullmatch(r"<[!-;=?-~]+@[A-Za-z0-9.-]+>", message_id):
            return None
        out.append(line)
    for name, value in headers:
        if name.lower() in _STRUCTURED or "=?" in value or not _UNSTRUCTURED.fullmatch(value):
            return None
        line = _line(name, value)
        if line is None:
            return None
        out.append(line)
    content = text if text is not None else html
    assert content is not None
    try:
        lines = content.encode("utf-8").splitlines()
    except UnicodeEncodeError:
        return None  # lone surrogates: the standard library's error message explains it
    if lines and max(map(len, lines)) > MAX_LINE:
        return None  # the standard library would choose quoted-printable or base64
    try:
        content.encode("ascii")
        cte = "7bit"
    except UnicodeEncodeError:
        cte = "8bit"
    out.append(f'Content-Type: text/{"plain" if html is None else "html"}; charset="utf-8"')
    out.append(f"Content-Transfer-Encoding: {cte}")
    out.append("MIME-Version: 1.0")
    head = ("\r\n".join(out) + "\r\n\r\n").encode("ascii")
    return head + b"\r\n".join(lines) + b"\r\n"
