"""Token endpoint answers are parsed defensively (issue 13, point 5): the endpoint may be a
tenant's own URL, and no value it sends may raise anything but ``EndpointUnreachable``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailgate.adapters.oauth2 import parse_token
from mailgate.domain.oauth2 import EndpointUnreachable

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "extra",
    [
        {"expires_in": 1e30},
        {"expires_in": 10**40},
        {"expires_in": float("inf")},
        {"expires_in": float("nan")},
        {"expires_in": -5},
        {"expires_in": "3600"},
        {"expires_in": True},
        {"expires_in": [1]},
        {"client_secret_expires_at": 1e30},
        {"client_secret_expires_at": 10**40},
        {"client_secret_expires_at": float("inf")},
        {"client_secret_expires_at": "soon"},
        {"scope": {"a": 1}},
        {"refresh_token": 42},
    ],
)
def test_odd_values_are_clamped_or_ignored(extra: dict[str, Any]) -> None:
    tokens = parse_token({"access_token": "at", **extra}, NOW)
    assert tokens.access_token == "at"
    assert NOW < tokens.expires_at <= NOW + timedelta(days=366)
    assert tokens.client_secret_expires_at is None or tokens.client_secret_expires_at > NOW


@pytest.mark.parametrize("data", [[], "x", {"access_token": 5}, {"access_token": ""}, {}])
def test_answers_without_a_token_are_endpoint_failures(data: Any) -> None:
    with pytest.raises(EndpointUnreachable):
        parse_token(data, NOW)


def test_a_normal_answer() -> None:
    tokens = parse_token(
        {
            "access_token": "at",
            "expires_in": 3599,
            "refresh_token": "rt",
            "scope": "smtp",
            "client_secret_expires_at": 1893456000,
        },
        NOW,
    )
    assert tokens.expires_at == NOW + timedelta(seconds=3599)
    assert tokens.refresh_token == "rt" and tokens.scope == "smtp"
    assert tokens.client_secret_expires_at == datetime(2030, 1, 1, tzinfo=UTC)
