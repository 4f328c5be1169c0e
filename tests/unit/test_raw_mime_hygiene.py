"""Complete MIME messages that no SMTP server may be sent are refused, and ``Bcc :`` is Bcc
(issue 13, point 8)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mailgate.domain.errors import ValidationFailed
from mailgate.schemas.email_server import MessageDefaults
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox.mime import first_long_line, prepare_raw

NOW = datetime(2026, 1, 2, tzinfo=UTC)
HEAD = b"From: a@example.com\r\nTo: t@example.net\r\nSubject: s\r\n\r\n"


def test_nul_bytes_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="NUL"):
        prepare_raw(HEAD + b"binary \x00 data\r\n", MessageDefaults(), NOW)
    with pytest.raises(ValidationError) as caught:
        MessageIn.model_validate({"to": ["t@example.net"], "text": "a\x00b"})
    assert caught.value.errors()[0]["loc"] == ("text",)


def test_lines_over_998_octets_are_refused_naming_the_line() -> None:
    assert prepare_raw(HEAD + b"x" * 998 + b"\r\n", MessageDefaults(), NOW)
    with pytest.raises(ValidationFailed, match="line 5 is longer than 998 octets"):
        prepare_raw(HEAD + b"x" * 999 + b"\r\n", MessageDefaults(), NOW)
    with pytest.raises(ValidationFailed, match="line 1 is longer"):
        prepare_raw(b"X-Long: " + b"y" * 1000 + b"\r\n" + HEAD, MessageDefaults(), NOW)


@pytest.mark.parametrize("name", [b"Bcc :", b"Bcc\t:", b"BCC  :"])
def test_bcc_with_space_before_the_colon_is_bcc(name: bytes) -> None:
    raw = (
        b"From: a@example.com\r\nTo: t@example.net\r\n" + name + b" hidden@example.net\r\n"
        b"Subject: s\r\n\r\nbody\r\n"
    )
    built = prepare_raw(raw, MessageDefaults(), NOW)
    assert built.rcpt_to == ["t@example.net", "hidden@example.net"]
    assert b"hidden" not in built.raw and b"Subject: s" in built.raw
    assert built.raw.endswith(b"\r\n\r\nbody\r\n")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r"]),
            st.integers(min_value=0, max_value=1100).map(lambda n: b"x" * n),
        ),
        max_size=12,
    )
)
def test_the_long_line_search_finds_what_the_regular_expression_finds(
    parts: list[bytes],
) -> None:
    """``first_long_line`` is the linear form of ``[^\\r\\n]{999}`` (which tried 999 octets
    at every position): the same offset, or none, for any mix of runs and line ends."""
    raw = b"".join(parts)
    found = re.search(rb"[^\r\n]{999}", raw)
    assert first_long_line(raw) == (found.start() if found else None)


_ATTACHED = (
    b'From: Ann <a@example.com>\r\nTo: t@example.net, "U, V" <u@example.net>\r\n'
    b"Cc: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nSubject: =?utf-8?b?w6TDtsO8?=\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n.\r\n"
    b'--b1\r\nContent-Type: application/pdf; name="x.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
)
RAW_MESSAGES = [
    HEAD + b"plain body\r\n",
    HEAD.replace(b"\r\n", b"\n") + b"bare line feeds\nhere\n",
    b"From: a@example.com\r\nTo: t@example.net\r\nSubject: folded\r\n  subject line\r\n"
    b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n",
    _ATTACHED,
    _ATTACHED.replace(b"Subject:", b"Bcc: hidden@example.org\r\nSubject:"),
    b"From: a@example.com\r\nBcc : b@example.org\r\nTo: t@example.net\r\n\r\nobsolete Bcc\r\n",
    b"From: a@example.com\r\nTo: undisclosed-recipients:;\r\n\r\nbody\r\n",
    b"From: a@example.com\r\nTo: t@example.net\r\nContent-Type: text/plain; charset=latin-1"
    b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nb\xe4d\r\n",
]


@pytest.mark.parametrize("raw", RAW_MESSAGES)
@pytest.mark.parametrize("rcpt_to", [None, ["e@example.net"]])
def test_reading_the_headers_only_gives_what_the_whole_parse_gives(
    raw: bytes, rcpt_to: list[str] | None
) -> None:
    """``prepare_raw`` parses only the headers (unless Bcc must be removed): the result -
    bytes, envelope, subject, Message-ID, or the errors - is the same as with the whole
    message parsed."""
    defaults = MessageDefaults()

    def outcome(headers_only: bool) -> object:
        try:
            built = prepare_raw(raw, defaults, NOW, rcpt_to=rcpt_to, headers_only=headers_only)
        except ValidationFailed as exc:
            return [(e.field, e.message) for e in exc.errors]
        # A generated Message-ID differs each time: compare the rest.
        generated = b"Message-ID:" not in raw
        return (
            built.raw if not generated else built.raw.split(b"\r\n", 2)[-1],
            built.mail_from,
            built.rcpt_to,
            built.subject,
            None if generated else built.message_id,
        )

    assert outcome(True) == outcome(False)
