"""Pure protocol helpers of the SMTP transport: no network."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.adapters.smtp import (
    REDACTED,
    Outcome,
    SmtpReply,
    Transcript,
    classify,
    decode_xoauth2_challenge,
    hint_for,
    needs_smtputf8,
    parse_enhanced,
    redact_command,
    xoauth2_string,
)


def test_xoauth2_string_matches_the_documented_format() -> None:
    # The example of https://developers.google.com/gmail/imap/xoauth2-protocol
    encoded = xoauth2_string(
        "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
    )
    assert base64.b64decode(encoded) == (
        b"user=someuser@example.com\x01auth=Bearer "
        b"ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )
    assert encoded == (
        "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        "YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )


def test_gmail_challenge_is_decoded_and_garbage_is_not() -> None:
    payload = {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
    text = base64.b64encode(json.dumps(payload).encode()).decode()
    assert decode_xoauth2_challenge(text) == payload
    assert decode_xoauth2_challenge("not base64 at all!") is None
    assert decode_xoauth2_challenge(base64.b64encode(b"[1, 2]").decode()) is None


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


def test_redaction_of_auth_commands_and_continuations() -> None:
    assert redact_command([b"AUTH", b"PLAIN", b"AGFsaWNlAHB3"], in_auth=False) == (
        f"AUTH PLAIN {REDACTED}"
    )
    assert redact_command([b"AUTH", b"LOGIN"], in_auth=False) == "AUTH LOGIN"
    assert redact_command([b"cGFzc3dvcmQ="], in_auth=True) == REDACTED
    assert redact_command([b""], in_auth=True) == "(empty line)"
    assert redact_command([b"*"], in_auth=True) == "*"
    assert redact_command([b"MAIL", b"FROM:<a@b.c>"], in_auth=False) == "MAIL FROM:<a@b.c>"


def test_transcript_redacts_the_whole_auth_exchange_and_known_secrets() -> None:
    t = Transcript()
    t.add_secret("hunter2-password")
    t.client([b"AUTH", b"LOGIN", b"dXNlcg=="])
    t.server(334, "UGFzc3dvcmQ6")
    t.client([base64.b64encode(b"hunter2-password")])
    t.server(235, "2.7.0 ok")
    t.client([b"MAIL", b"FROM:<x@y.z>"])
    t.server(550, "echoing hunter2-password back\nsecond line")
    joined = "\n".join(t.lines)
    assert "hunter2" not in joined
    assert base64.b64encode(b"hunter2-password").decode() not in joined
    assert t.lines[2] == f"C: {REDACTED}"
    assert t.lines[4] == "C: MAIL FROM:<x@y.z>", "redaction ends with the AUTH exchange"
    assert t.lines[-2:] == [f"S: 550-echoing {REDACTED} back", "S: 550 second line"]


def test_transcript_is_bounded() -> None:
    t = Transcript(limit=3)
    for _ in range(10):
        t.note("x")
    t.client([b"MAIL", b"FROM:<x@y.z>"])
    t.server(250, "ok")
    assert len(t.lines) == 4 and "truncated" in t.lines[-1]


def test_smtputf8_detection() -> None:
    assert not needs_smtputf8("a@example.com", ["b@example.org"])
    assert needs_smtputf8("a@example.com", ["jørgen@example.dk"])
    assert needs_smtputf8("小@example.com", [])


def _r(code: int, text: str) -> SmtpReply:
    return SmtpReply.parse(code, text)


@pytest.mark.parametrize(
    ("step", "kind", "reply", "expect"),
    [
        ("resolve", "dns", None, "does not resolve"),
        ("connect", "refused", None, "Nothing accepts connections"),
        ("connect", "timeout", None, "did not answer in time"),
        ("tls", "cert_untrusted", None, "tls.ca_certificates_pem"),
        ("tls", "hostname_mismatch", None, "does not name this host"),
        ("tls", "starttls_missing", None, "does not offer STARTTLS"),
        ("auth", "auth_missing", None, "offers no authentication"),
        ("auth", "auth_failed", _r(535, "5.7.3 Authentication unsuccessful"), "rejected the cred"),
        ("auth", "auth_failed", _r(535, "5.7.139 Authentication unsuccessful"), "disabled"),
        ("mail_from", "reply", _r(530, "5.7.0 Must issue a STARTTLS command first"), "STARTTLS"),
        ("mail_from", "reply", _r(530, "5.7.57 Client not authenticated"), "requires auth"),
        (
            "data",
            "reply",
            _r(550, "5.7.60 SMTP; Client does not have permissions to send as this sender"),
            "Send As",
        ),
        ("rcpt_to", "reply", _r(550, "5.7.1 Unable to relay"), "relay"),
        ("rcpt_to", "reply", _r(554, "5.7.1 Relay access denied"), "relay"),
        ("mail_from", "reply", _r(421, "4.3.2 Service not available"), "temporary"),
        ("rcpt_to", "reply", _r(451, "4.7.1 Greylisted"), "temporary"),
        ("data", "reply", _r(552, "5.3.4 Message size exceeds fixed limit"), "larger"),
        ("mail_from", "too_large", None, "larger"),
        ("rcpt_to", "reply", _r(550, "5.1.1 User unknown"), "does not know this recipient"),
    ],
)
def test_hints(step: str, kind: str, reply: SmtpReply | None, expect: str) -> None:
    hint = hint_for(step, kind, reply)
    assert hint is not None and expect in hint


def test_no_hint_for_success_or_unknown() -> None:
    assert hint_for("data", None, _r(250, "2.0.0 OK")) is None
    assert hint_for("data", "reply", _r(554, "5.6.0 something odd")) is None
