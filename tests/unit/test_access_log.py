"""The access log redacts credentials in query strings (issue 13, point 7)."""

from __future__ import annotations

import logging

import pytest

from mailgate.entrypoints.access_log import RedactingFilter, redact_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/reset-password?token=mgr_abc", "/ui/reset-password?token=<redacted>"),
        ("/ui/reset-password?t=mgr_abc", "/ui/reset-password?t=<redacted>"),
        (
            "/settings/oauth2code?code=0.AXo&state=s3cr3t&session_state=x",
            "/settings/oauth2code?code=<redacted>&state=<redacted>&session_state=<redacted>",
        ),
        ("/settings/oauth2code?error=access_denied", "/settings/oauth2code?error=<redacted>"),
        ("/anything?x=1&Token=abc&state=9", "/anything?x=1&Token=<redacted>&state=<redacted>"),
        ("/anything?%74oken=abc", "/anything?%74oken=<redacted>"),
        ("/api/v1/tenants/home/messages?limit=5", "/api/v1/tenants/home/messages?limit=5"),
        ("/healthz", "/healthz"),
    ],
)
def test_redact_target(target: str, expected: str) -> None:
    assert redact_target(target) == expected


def test_filter_rewrites_uvicorns_access_record() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/ui/reset-password?token=mgr_secret", "1.1", 200),
        None,
    )
    assert RedactingFilter().filter(record)
    line = record.getMessage()
    assert "mgr_secret" not in line
    assert line == '127.0.0.1:5000 - "GET /ui/reset-password?token=<redacted> HTTP/1.1" 200'
