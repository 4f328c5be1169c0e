"""The ``X-Mailgate-*`` option headers of SMTP submission (services/submission.py)."""

from __future__ import annotations

import pytest

from mailgate.domain.errors import ValidationFailed
from mailgate.domain.messages import Priority
from mailgate.entrypoints.smtp.listener import is_loopback, parse_listen
from mailgate.entrypoints.smtp.replies import clean
from mailgate.services.submission import (
    MessageOptions,
    options_from_headers,
    split_option_headers,
)


def test_option_fields_are_taken_out_and_every_other_byte_stays() -> None:
    raw = (
        b"From: a@example.com\r\n"
        b"X-Mailgate-Server: OTHER\r\n"
        b"Subject: folded\r\n"
        b" subject line\r\n"
        b"x-mailgate-hold:\r\n"
        b"\tyes\r\n"
        b"X-Order: 42\r\n"
        b"\r\n"
        b"X-Mailgate-Server: in the body stays\r\n"
    )
    stripped, fields = split_option_headers(raw)
    assert fields == [("X-Mailgate-Server", "OTHER"), ("x-mailgate-hold", "yes")]
    assert stripped == (
        b"From: a@example.com\r\n"
        b"Subject: folded\r\n"
        b" subject line\r\n"
        b"X-Order: 42\r\n"
        b"\r\n"
        b"X-Mailgate-Server: in the body stays\r\n"
    )


def test_a_message_without_option_fields_is_returned_as_is() -> None:
    for raw in (b"Subject: x\n\nbody\n", b"Subject: no body", b"", b"\r\n\r\nX-Mailgate-Hold: y"):
        assert split_option_headers(raw) == (raw, [])


def test_bare_lf_messages_work_too() -> None:
    stripped, fields = split_option_headers(b"X-Mailgate-Priority: low\nSubject: s\n\nb\n")
    assert stripped == b"Subject: s\n\nb\n"
    assert options_from_headers(fields) == MessageOptions(priority=Priority.LOW)


def test_options_and_their_errors_name_the_header() -> None:
    assert options_from_headers([]) == MessageOptions()
    assert options_from_headers(
        [("X-MAILGATE-SERVER", "X"), ("X-Mailgate-Hold", "No"), ("X-Mailgate-Priority", "High")]
    ) == MessageOptions("X", False, Priority.HIGH)
    for value in ("true", "YES", "1", "on"):
        assert options_from_headers([("X-Mailgate-Hold", value)]).hold
    with pytest.raises(ValidationFailed) as err:
        options_from_headers(
            [
                ("X-Mailgate-Hold", "maybe"),
                ("X-Mailgate-Priority", "urgent"),
                ("X-Mailgate-Sever", "X"),
                ("X-Mailgate-Server", "A"),
                ("x-mailgate-server", "B"),
            ]
        )
    fields = [e.field for e in err.value.errors]
    assert fields == [
        "X-Mailgate-Sever",
        "X-Mailgate-Server",
        "X-Mailgate-Hold",
        "X-Mailgate-Priority",
    ]


def test_listen_addresses_and_loopback() -> None:
    assert parse_listen("S", "127.0.0.1:2587") == ("127.0.0.1", 2587)
    assert parse_listen("S", "[::1]:0") == ("::1", 0)
    assert parse_listen("S", "0.0.0.0:465") == ("0.0.0.0", 465)
    for bad in ("2587", ":25", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="S: expected host:port"):
            parse_listen("S", bad)
    assert is_loopback(("127.0.0.1", 1)) and is_loopback(("127.8.9.1", 1))
    assert is_loopback(("::1", 1, 0, 0)) and is_loopback(("::ffff:127.0.0.1", 1, 0, 0))
    assert not is_loopback(("192.0.2.7", 1)) and not is_loopback(("2001:db8::1", 1, 0, 0))
    assert not is_loopback(None)


def test_reply_texts_are_one_printable_ascii_line() -> None:
    assert clean("a\r\nb\tc") == "a b c"
    assert clean("Zoë") == "Zo?"
    assert len(clean("x" * 1000)) == 400


def test_metadata_headers_carry_the_messages_metadata() -> None:
    got = options_from_headers(
        [
            ("X-Mailgate-Metadata-order", "42"),
            ("x-mailgate-metadata-Customer.Id", "=?utf-8?q?K=C3=B8benhavn?="),
        ]
    )
    assert got.metadata == {"order": "42", "Customer.Id": "København"}
    assert options_from_headers([]).metadata is None
    with pytest.raises(ValidationFailed) as err:
        options_from_headers([("X-Mailgate-Metadata-bad key", "x"), ("X-Mailgate-Metadata-", "y")])
    assert [e.field for e in err.value.errors] == [
        "X-Mailgate-Metadata-bad key",
        "X-Mailgate-Metadata-*",
    ]
    with pytest.raises(ValidationFailed) as err:
        options_from_headers([("X-Mailgate-Metadata-bad/key", "x")])
    assert [e.field for e in err.value.errors] == ["X-Mailgate-Metadata-bad/key"]
    many = [(f"X-Mailgate-Metadata-k{i}", "v") for i in range(21)]
    with pytest.raises(ValidationFailed, match="at most 20 pairs"):
        options_from_headers(many)
