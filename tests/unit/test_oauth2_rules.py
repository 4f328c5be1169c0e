"""Pure OAuth2 rules: provider presets, token parsing, refusal classes, backoff, warnings."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from mailgate.adapters.oauth2 import parse_token
from mailgate.domain.oauth2 import (
    BACKOFF_MAX,
    EndpointUnreachable,
    Refusal,
    backoff,
    classify_refusal,
    needs_refresh,
    secret_warning,
)
from mailgate.domain.oauth2_providers import (
    GOOGLE_SCOPE,
    MICROSOFT_APP_SCOPE,
    MICROSOFT_DELEGATED_SCOPE,
    ProviderSettings,
    endpoints_for,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = ProviderSettings(
    microsoft_authority="https://login.example/",
    google_authorize_url="https://g.example/auth",
    google_token_url="https://g.example/token",
)


def test_microsoft_presets_use_the_directory_tenant() -> None:
    ep = endpoints_for(
        SETTINGS, provider="microsoft", grant="authorization_code", directory_tenant_id="c/x"
    )
    assert ep.authorize_url == "https://login.example/c%2Fx/oauth2/v2.0/authorize"
    assert ep.token_url == "https://login.example/c%2Fx/oauth2/v2.0/token"
    assert ep.scope == MICROSOFT_DELEGATED_SCOPE
    assert ep.authorize_params == {"response_mode": "query"}
    app = endpoints_for(
        SETTINGS, provider="microsoft", grant="client_credentials", directory_tenant_id="t"
    )
    assert app.scope == MICROSOFT_APP_SCOPE == "https://outlook.office365.com/.default"


def test_google_and_custom_presets() -> None:
    g = endpoints_for(SETTINGS, provider="google", grant="authorization_code")
    assert (g.authorize_url, g.token_url, g.scope) == (
        "https://g.example/auth",
        "https://g.example/token",
        GOOGLE_SCOPE,
    )
    assert g.authorize_params == {"access_type": "offline", "prompt": "consent"}
    assert not g.send_scope_on_refresh
    c = endpoints_for(
        SETTINGS, provider="custom", grant="authorization_code", token_url="https://t", scope="s"
    )
    assert (c.token_url, c.scope) == ("https://t", "s")
    with pytest.raises(ValueError):
        endpoints_for(SETTINGS, provider="custom", grant="authorization_code")


def test_parse_token() -> None:
    t = parse_token(
        {"access_token": "a", "expires_in": "120", "refresh_token": "r", "scope": "x"}, NOW
    )
    assert (t.access_token, t.refresh_token, t.scope) == ("a", "r", "x")
    assert t.expires_at == NOW + timedelta(seconds=120)
    assert t.client_secret_expires_at is None
    d = parse_token({"access_token": "a", "client_secret_expires_at": 1893456000}, NOW)
    assert d.expires_at == NOW + timedelta(hours=1)  # expires_in missing: assume an hour
    assert d.client_secret_expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert (
        parse_token(
            {"access_token": "a", "client_secret_expires_at": 0}, NOW
        ).client_secret_expires_at
        is None
    )
    with pytest.raises(EndpointUnreachable):
        parse_token({"token_type": "Bearer"}, NOW)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("invalid_grant", Refusal.REAUTHORIZE),
        ("interaction_required", Refusal.REAUTHORIZE),
        ("invalid_client", Refusal.CONFIGURATION),
        ("unauthorized_client", Refusal.CONFIGURATION),
        ("invalid_scope", Refusal.CONFIGURATION),
        ("temporarily_unavailable", Refusal.TEMPORARY),
        ("server_error", Refusal.TEMPORARY),
    ],
)
def test_classify_refusal(error: str, kind: Refusal) -> None:
    assert classify_refusal(error) is kind


def test_backoff_grows_and_is_capped() -> None:
    steps = [backoff(n) for n in range(1, 12)]
    assert steps[0] == timedelta(seconds=30)
    assert steps[1] == timedelta(seconds=60)
    assert all(a <= b for a, b in itertools.pairwise(steps))
    assert steps[-1] == BACKOFF_MAX
    assert backoff(10_000) == BACKOFF_MAX


def test_needs_refresh_keeps_a_margin() -> None:
    assert needs_refresh(None, NOW)
    assert needs_refresh(NOW + timedelta(minutes=4), NOW)
    assert not needs_refresh(NOW + timedelta(minutes=6), NOW)


def test_secret_warning() -> None:
    assert secret_warning(None, NOW) is None
    assert secret_warning(NOW + timedelta(days=90), NOW) is None
    assert "2026-01-11" in (secret_warning(NOW + timedelta(days=10), NOW) or "")
    assert "expired" in (secret_warning(NOW - timedelta(days=1), NOW) or "")
