"""Header values that would break out of their header line.

A value is unsafe when it holds a control character (CR, LF, NUL, ...) as typed, or when
an RFC 2047 encoded word in it decodes to one: ``=?utf-8?q?hi=0D=0AX-Injected:_1?=``.
Python's ``email`` package decodes such words when it refolds a header and, on
Python < 3.12.5 / 3.11.10, writes the decoded line break to the wire (CVE-2024-6923:
a second header, or a replaced body); patched versions raise ``HeaderWriteError``
instead. Either way the value has to be refused before a message is built.

Encoded words are found as leniently as the standard library's parser finds them (no
whitespace needed around them, any charset, sloppy base64), so that nothing it would
decode escapes the check.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re

# C0 controls except HTAB, and DEL: the email package writes them raw (a vertical tab
# or a form feed too); CR/LF end the header line.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 2047 section 2, as leniently as email._header_value_parser.get_encoded_word reads it.
_ENCODED_WORD = re.compile(r"=\?([^?]*)\?([qQbB])\?(.*?)\?=", re.DOTALL)
_Q_ESCAPE = re.compile(rb"=([a-fA-F0-9]{2})")
_B64_NOISE = re.compile(r"[^A-Za-z0-9+/]")


def _decode_q(text: str) -> bytes:
    data = text.replace("_", " ").encode("ascii", "surrogateescape")
    return _Q_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _decode_b(text: str) -> bytes:
    data = _B64_NOISE.sub("", text)
    data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data)
    except (binascii.Error, ValueError):
        return b""


def _decoded_words(value: str) -> list[str]:
    """Every encoded word's content, decoded the ways a reader might decode it."""
    out: list[str] = []
    for match in _ENCODED_WORD.finditer(value):
        charset, encoding, text = match.groups()
        data = _decode_q(text) if encoding in "qQ" else _decode_b(text)
        out.append(data.decode("latin-1"))  # CR/LF/NUL of every ASCII-based charset
        # An unknown charset: the reader keeps the bytes, checked above.
        with contextlib.suppress(LookupError, ValueError):
            out.append(data.decode(charset.partition("*")[0] or "ascii", "replace"))
    return out


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be a header value, or ``None`` when it can."""
    if _CONTROL.search(value):
        return "must not contain line breaks, NUL or other control characters"
    if "=?" in value:
        for decoded in _decoded_words(value):
            if _CONTROL.search(decoded):
                return (
                    "an RFC 2047 encoded word in it decodes to a line break, NUL or another "
                    "control character (header injection)"
                )
    return None


def check_header_value(value: str) -> str:
    """``value``, or ``ValueError`` saying why it cannot be a header value."""
    problem = header_value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value
