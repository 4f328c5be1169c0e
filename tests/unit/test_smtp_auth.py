"""SMTP AUTH helpers (adapters/smtp/auth.py): the XOAUTH2 string, Gmail's challenge, the
choice of mechanism. No network."""

from __future__ import annotations

import base64
import json

import pytest

from mailgate.adapters.smtp.auth import (
    decode_xoauth2_challenge,
    describe_challenge,
    mechanism_missing,
    password_mechanism,
    xoauth2_string,
)
from mailgate.domain.transport import FailureKind


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


def test_a_decoded_challenge_is_described_for_the_admin() -> None:
    assert describe_challenge(None) == ""
    assert describe_challenge({"status": "401"}) == " (server says: status 401)"
    assert describe_challenge({"status": "400", "scope": "https://mail.google.com/"}) == (
        " (server says: status 400, scope https://mail.google.com/)"
    )


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["plain", "login"], "PLAIN"),
        (["login", "plain"], "PLAIN"),
        (["login"], "LOGIN"),
        (["xoauth2", "login"], "LOGIN"),
        (["xoauth2"], None),
        ([], None),
    ],
)
def test_password_mechanism_prefers_plain(offered: list[str], chosen: str | None) -> None:
    assert password_mechanism(offered) == chosen


def test_a_missing_mechanism_lists_what_was_offered() -> None:
    err = mechanism_missing("the server does not offer XOAUTH2", ["plain", "login"])
    assert err.kind is FailureKind.AUTH_MECHANISM_MISSING and err.step == "auth"
    assert err.detail == "the server does not offer XOAUTH2 (offered: PLAIN LOGIN)"
    assert mechanism_missing("none usable", []).detail.endswith("(offered: none)")
