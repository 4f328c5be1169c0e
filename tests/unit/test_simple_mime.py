"""``simple_mime`` writes exactly the bytes the standard library writes, or declines.

Generated requests are built both ways; the results must be identical, including which
requests are refused. Two kinds are generated, about half each:

- messages made to take the direct path (names of atext words, short printable subjects
  and custom headers, one text or HTML body with lines of at most 78 bytes, non-ASCII,
  leading dots and "From ", bare CR and LF), some of them just past its limits;
- anything (addresses with and without names, subjects and headers that are and are not
  simple, both bodies, long lines), nearly all of which the standard library builds.

The test counts which path each example took and fails when too few took either: a
strategy that stops reaching the direct path would otherwise pass without testing it.
"""

from __future__ import annotations

import collections
import email.generator
import string
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.domain.errors import MailgateError, ValidationFailed
from mailgate.schemas.email_server import MessageDefaults
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox import mime, simple_mime

NOW = datetime(2026, 11, 29, 2, 30, 5, tzinfo=UTC)
EXAMPLES = 600
# Of all examples, at least this share must take the direct path, and this share the
# standard library's (measured over 7 runs: 0.48-0.62 and 0.38-0.52; with only the
# "anything" requests, as before, 0.015-0.03 took the direct path).
MIN_DIRECT = 0.35
MIN_STDLIB = 0.25

SHORT_ADDRESSES = [
    "a@example.com",
    "first.last@example.org",
    "x+tag@sub.example.net",
    "o'neil@example.com",
    "b_c-d@e-x.example",
    "UPPER@Example.COM",
]
addresses = st.sampled_from(
    [
        *SHORT_ADDRESSES,
        "user@xn--bcher-kva.example",  # becomes user@bücher.example
        "very.long.local.part.that.goes.on.and.on@a-really-long-domain-name.example",
    ]
)
names = st.one_of(
    st.none(),
    st.sampled_from(["Ann", "Ann Smith", "Smith, Ann", "A. Smith", "Zoë", 'say "hi"', "a  b"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x17F), max_size=30),
)


def address() -> st.SearchStrategy[Any]:
    return st.one_of(addresses, st.builds(lambda a, n: {"address": a, "name": n}, addresses, names))


header_text = st.one_of(
    st.sampled_from(["Invoice 42", "Re: your order", "=?utf-8?q?x?=", "a  b", " lead", "é"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x7F), max_size=90),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=20),
)
line = st.one_of(
    st.sampled_from(["", ".", "..x", "From here", "x" * 78, "y" * 79, "ü" * 39, "ü" * 40]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x24F), max_size=90),
)


def lines_joined(line: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Lines with LF, CRLF or bare CR between them, and any ending."""
    return st.builds(
        lambda lines, sep, end: sep.join(lines) + end,
        st.lists(line, max_size=6),
        st.sampled_from(["\n", "\r\n", "\r"]),
        st.sampled_from(["", "\n", "\r\n"]),
    )


any_request = st.fixed_dictionaries(
    {"from": address(), "to": st.lists(address(), min_size=1, max_size=3)},
    optional={
        "cc": st.lists(address(), max_size=2),
        "reply_to": st.lists(address(), max_size=2),
        "subject": header_text,
        "text": lines_joined(line),
        "html": lines_joined(line),
        "headers": st.dictionaries(
            st.sampled_from(["X-Bench-Id", "X-Mailer", "In-Reply-To", "References", "Sender"]),
            header_text,
            max_size=2,
        ),
    },
)

# What the direct path writes (simple_mime): RFC 5322 atext words, printable ASCII words.
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
atext_words = st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=6), min_size=1, max_size=2)
printable_words = st.lists(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=10
    ),
    min_size=1,
    max_size=7,
).map(" ".join)  # up to 76 characters: a header line may pass 78 (the stdlib folds it)
simple_address = st.one_of(
    st.sampled_from(SHORT_ADDRESSES),
    st.builds(
        lambda a, n: {"address": a, "name": " ".join(n)},
        st.sampled_from(SHORT_ADDRESSES),
        atext_words,
    ),
)
simple_line = st.one_of(
    st.sampled_from(["", ".", "..x", "From here", "x" * 78, " lead", "trail "]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=78),
    # At most 39 characters of at most 2 bytes: at most 78 bytes of UTF-8 (8bit).
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x7FF), max_size=39),
)
simple_body = st.one_of(
    st.fixed_dictionaries({"text": lines_joined(simple_line)}),
    st.fixed_dictionaries({"html": lines_joined(simple_line)}),
)
simple_request = st.builds(
    lambda head, body: {**head, **body},
    st.fixed_dictionaries(
        {"from": simple_address, "to": st.lists(simple_address, min_size=1, max_size=2)},
        optional={
            "cc": st.lists(simple_address, max_size=1),
            "reply_to": st.lists(simple_address, max_size=1),
            "subject": printable_words,
            "headers": st.dictionaries(
                st.sampled_from(["X-Bench-Id", "X-Mailer", "In-Reply-To", "References"]),
                printable_words,
                max_size=2,
            ),
        },
    ),
    simple_body,
)
requests = st.one_of(simple_request, any_request)


def _build(body: MessageIn, fast: bool) -> tuple[str, Any]:
    try:
        built = mime.build_mime(body, MessageDefaults(), NOW, fast=fast)
    except MailgateError as exc:
        return "error", type(exc).__name__
    return "ok", (built.raw, built.mail_from, built.rcpt_to, built.subject, built.message_id)


@pytest.fixture
def fixed_msgid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "_msgid", lambda sender: "<1.2.3@example.com>")
    # multipart boundaries are random: the same one for both builds
    monkeypatch.setattr(
        email.generator.Generator, "_make_boundary", classmethod(lambda cls, text=None: "=b=")
    )


def test_same_bytes_as_the_standard_library(
    fixed_msgid: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths: collections.Counter[str] = collections.Counter()
    render = simple_mime.render

    def counting_render(**kwargs: Any) -> bytes | None:
        raw = render(**kwargs)
        paths["direct" if raw is not None else "stdlib"] += 1
        return raw

    monkeypatch.setattr(mime, "render_simple", counting_render)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=requests)
    def same_bytes(data: dict[str, Any]) -> None:
        try:
            body = MessageIn.model_validate(data)
        except ValueError:
            paths["refused by the schema"] += 1
            return
        before = paths.total()
        assert _build(body, fast=True) == _build(body, fast=False)
        if paths.total() == before:
            paths["refused before MIME"] += 1  # no recipient, say

    same_bytes()
    total = paths.total()
    assert paths["direct"] >= MIN_DIRECT * total, paths
    assert paths["stdlib"] >= MIN_STDLIB * total, paths


def test_the_common_message_takes_the_direct_path(fixed_msgid: None) -> None:
    data = {
        "from": {"address": "billing@example.com", "name": "Billing Team"},
        "to": ["customer@example.org"],
        "subject": "Invoice 2026-1142",
        "text": "".join(f"{i:04d} " + "x" * 71 + "\n" for i in range(128)),
        "headers": {"X-Bench-Id": "b-1"},
    }
    body = MessageIn.model_validate(data)
    raw = simple_mime.render(
        sender=("billing@example.com", "Billing Team"),
        to=[("customer@example.org", None)],
        cc=[],
        reply_to=[],
        subject=data["subject"],
        date="Sun, 29 Nov 2026 02:30:05 +0000",
        message_id="<1.2.3@example.com>",
        headers=[("X-Bench-Id", "b-1")],
        text=data["text"],
        html=None,
    )
    assert raw is not None
    assert raw == mime.build_mime(body, MessageDefaults(), NOW, fast=False).raw


def test_a_header_the_standard_library_cannot_parse_is_the_clients_error() -> None:
    # "Sender: <" made email.headerregistry raise IndexError: a 500 before.
    body = MessageIn.model_validate(
        {"from": "a@example.com", "to": ["b@example.com"], "headers": {"Sender": "<"}}
    )
    with pytest.raises(ValidationFailed) as err:
        mime.build_mime(body, MessageDefaults(), NOW)
    assert err.value.errors[0].field == "headers.Sender"


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "Grüße"},  # needs an encoded word
        {"subject": "x" * 80},  # needs folding
        {"from": {"address": "a@example.com", "name": "Smith, Ann"}},  # needs quotes
        {"text": "x" * 79},  # quoted-printable
        {"html": "<p>x</p>"},  # multipart/alternative
        {"attachments": [{"filename": "a.txt", "content_base64": "eA=="}]},
    ],
)
def test_anything_else_is_left_to_the_standard_library(
    change: dict[str, Any], fixed_msgid: None
) -> None:
    data: dict[str, Any] = {"from": "a@example.com", "to": ["b@example.com"], "text": "hi"}
    body = MessageIn.model_validate({**data, **change})
    fast = _build(body, fast=True)
    assert fast == _build(body, fast=False)
    assert fast[0] == "ok"
