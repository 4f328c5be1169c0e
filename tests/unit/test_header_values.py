"""Header values that would break out of their line, typed or inside RFC 2047 encoded words
(``domain/headers.py``), and the message builders that refuse them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from mailgate.domain.errors import ValidationFailed
from mailgate.domain.headers import header_value_problem
from mailgate.schemas.email_server import MessageDefaults
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox.mime import build_mime, prepare_raw

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def b_word(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?b?{base64.b64encode(text.encode(charset)).decode()}?="


INJECTIONS = [
    "=?utf-8?q?hi=0D=0AX-Injected:_1?=",
    "=?utf-8?q?hi=0D=0A=0D=0Anew body?=",
    "=?UTF-8?Q?hi=0AX-Injected:_1?=",
    "=?utf-8?q?hi=00?=",
    "=?utf-8?q?=0D?=",  # "?=" right after the "q?" (the stdlib reads it as one word)
    "prefix" + "=?utf-8?q?=0B?=" + "suffix",  # no whitespace around the word
    b_word("hi\r\nX-Injected: 1"),
    b_word("hi\r\nX-Injected: 1")[:-3] + "?=",  # sloppy padding
    b_word("hi\nX: 1", "utf-16"),
    "=?x-unknown?q?hi=0D=0AX:_1?=",
    "=?utf-8*en?q?hi=0D=0AX:_1?=",  # RFC 2231 language tag
    "plain\x0bvertical tab",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_line_breaks_inside_encoded_words_are_refused(value: str) -> None:
    assert header_value_problem(value) is not None


@pytest.mark.parametrize(
    "value",
    ["Invoice 42", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", b_word("Ørsted A/S"), "a=?b", "tab\there", "é"],
)
def test_ordinary_values_pass(value: str) -> None:
    assert header_value_problem(value) is None


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("subject", {"subject": INJECTIONS[0]}),
        ("headers.X-Order", {"headers": {"X-Order": INJECTIONS[6]}}),
        ("message_defaults.from_name", {}),
    ],
)
def test_builders_refuse_injection_from_unchecked_values(
    fast: bool, field: str, body: dict[str, object]
) -> None:
    """``model_construct`` skips validation, as values stored before the check was added do:
    both builders still refuse them, naming the field."""
    defaults = MessageDefaults.model_construct(
        from_address="noreply@example.com",
        from_name=INJECTIONS[1] if field.startswith("message_defaults") else "Example",
        headers={},
        cc=[],
        bcc=[],
    )
    msg = MessageIn.model_construct(
        **{
            "from_": None,
            "to": ["a@example.net"],
            "cc": [],
            "bcc": [],
            "reply_to": [],
            "subject": None,
            "text": "hi",
            "html": None,
            "attachments": [],
            "headers": {},
            **body,
        }
    )
    with pytest.raises(ValidationFailed) as caught:
        build_mime(msg, defaults, NOW, fast=fast)
    assert [e.field for e in caught.value.errors] == [field]


@pytest.mark.parametrize(
    "head",
    [
        b"Subject: =?utf-8?q?hi=0D=0AX-Injected:_1?=\r\n",
        b"X-Note: folded\r\n =?utf-8?b?" + base64.b64encode(b"a\r\n\r\nbody") + b"?=\r\n",
        b"Subject: bare \r cr\r\n",
    ],
)
def test_raw_route_refuses_injection_in_any_header(head: bytes) -> None:
    raw = b"From: s@example.com\r\nTo: a@example.net\r\nBcc: b@example.net\r\n" + head
    with pytest.raises(ValidationFailed) as caught:
        prepare_raw(raw + b"\r\nbody\r\n", MessageDefaults(), NOW)
    assert caught.value.errors[0].field == head.split(b":")[0].decode()


def test_raw_route_keeps_ordinary_encoded_words() -> None:
    raw = b"From: =?utf-8?q?J=C3=B8rn?= <s@example.com>\r\nTo: a@example.net\r\n" + (
        b"Bcc: b@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\nbody\r\n"
    )
    built = prepare_raw(raw, MessageDefaults(), NOW)
    assert built.subject == "Grüße" and b"Bcc" not in built.raw


def test_attachment_file_names_with_encoded_line_breaks_are_refused() -> None:
    from mailgate.schemas.message import AttachmentIn

    attachment = AttachmentIn.model_construct(
        filename=INJECTIONS[0] + ".pdf", content_type="application/pdf", content_base64="eA=="
    )
    msg = MessageIn.model_construct(
        from_="a@example.com",
        to=["t@example.net"],
        cc=[],
        bcc=[],
        reply_to=[],
        subject=None,
        text="x",
        html=None,
        attachments=[attachment],
        headers={},
    )
    with pytest.raises(ValidationFailed) as caught:
        build_mime(msg, MessageDefaults(), NOW)
    assert [e.field for e in caught.value.errors] == ["attachments.0.filename"]
