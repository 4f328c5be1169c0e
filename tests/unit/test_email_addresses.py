"""``normalize_email`` remembers email-validator's verdicts: the answers must be exactly the
library's, first time and again, valid or not."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email

from mailgate.schemas.common import normalize_email

ADDRESSES = [
    "sink@example.com",
    "Sink@Example.COM",
    "user+tag@sub.example.org",
    "ünïcode@exämple.de",
    "用户@例子.广告",
    "no-at-sign.example.com",
    "two@@example.com",
    "trailing.dot.@example.com",
    "a@b",
    "x" * 65 + "@example.com",
    'quoted"local@example.com',
    "",
]


def _library(value: str) -> tuple[str | None, str | None]:
    try:
        return validate_email(
            value, check_deliverability=False, allow_smtputf8=True
        ).normalized, None
    except EmailNotValidError as exc:
        return None, f"not a valid e-mail address: {exc}"


def _ours(value: str) -> tuple[str | None, str | None]:
    try:
        return normalize_email(value), None
    except ValueError as exc:
        return None, str(exc)


@pytest.mark.parametrize("value", ADDRESSES)
def test_same_answer_as_the_library_every_time(value: str) -> None:
    expected = _library(value)
    assert _ours(value) == expected
    assert _ours(value) == expected  # remembered


def test_line_breaks_are_refused_before_the_cache() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        normalize_email("a@example.com\r\nBcc: b@example.com")
