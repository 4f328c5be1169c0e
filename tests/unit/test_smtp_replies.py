"""SMTP replies (adapters/smtp/replies.py): enhanced status codes, parsing, classification.
No network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.adapters.smtp.replies import SmtpReply, classify, parse_enhanced
from mailgate.domain.messages import Outcome


@pytest.mark.parametrize(
    ("text", "enhanced", "rest"),
    [
        ("5.7.3 Authentication unsuccessful", "5.7.3", "Authentication unsuccessful"),
        ("2.0.0 OK", "2.0.0", "OK"),
        (
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled",
            "5.7.139",
            "Authentication unsuccessful, SmtpClientAuthentication is disabled",
        ),
        ("Must issue a STARTTLS command first", None, "Must issue a STARTTLS command first"),
        ("3.1.1 is not a valid class", None, "3.1.1 is not a valid class"),
        ("5.1.1", "5.1.1", ""),
    ],
)
def test_enhanced_status_codes(text: str, enhanced: str | None, rest: str) -> None:
    assert parse_enhanced(text) == (enhanced, rest)


def test_multi_line_reply_keeps_one_enhanced_code() -> None:
    reply = SmtpReply.parse(
        535,
        "5.7.8 Username and Password not accepted. Learn more at\n"
        "5.7.8  https://support.google.com/mail/?p=BadCredentials",
    )
    assert reply.enhanced == "5.7.8"
    assert reply.text == (
        "Username and Password not accepted. Learn more at "
        "https://support.google.com/mail/?p=BadCredentials"
    )
    assert str(reply).startswith("535 5.7.8 Username")
    assert SmtpReply.parse(-1, "").code is None


def _parse_reference(code: int | None, message: str) -> SmtpReply:
    """SmtpReply.parse before its one-line shortcut: the shortcut must not change a thing."""
    lines = [parse_enhanced(line) for line in message.splitlines()] or [(None, "")]
    text = " ".join(rest.strip() for _e, rest in lines).strip()
    return SmtpReply(code if code and code > 0 else None, lines[0][0], text)


@given(
    st.one_of(st.none(), st.integers(-1, 599)),
    st.one_of(
        st.text(),
        st.from_regex(r"[245]\.\d{1,3}\.\d{1,3}( [ -~]*)?", fullmatch=True),
        st.lists(st.sampled_from(["2.0.0 ok", " x ", "", "\r", "\n", "5.1.1", "\x85"])).map(
            "".join
        ),
    ),
)
def test_reply_parsing_shortcut_changes_nothing(code: int | None, message: str) -> None:
    assert SmtpReply.parse(code, message) == _parse_reference(code, message)


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (250, Outcome.DELIVERED),
        (251, Outcome.DELIVERED),
        (421, Outcome.TEMPORARY),
        (451, Outcome.TEMPORARY),
        (452, Outcome.TEMPORARY),
        (550, Outcome.PERMANENT),
        (554, Outcome.PERMANENT),
        (None, Outcome.TEMPORARY),
    ],
)
def test_classification(code: int | None, outcome: Outcome) -> None:
    assert classify(code) is outcome
