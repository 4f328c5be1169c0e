"""Pure delivery decisions: OAuth2 waits and the pacing of messages_per_minute."""

from __future__ import annotations

import pytest

from mailgate.schemas.email_server import EmailServerIn, Limits, ResolvedServer, ServerSecrets
from mailgate.services.delivery.policy import Pacer, oauth2_wait_reason, spacing_s


def server(**auth: str) -> ResolvedServer:
    cfg = EmailServerIn.model_validate(
        {"name": "S", "host": "smtp.example.com", "authentication": auth or {"method": "none"}}
    )
    return ResolvedServer(1, 1, "S", cfg, ServerSecrets())


OAUTH_CODE = {
    "method": "oauth2",
    "provider": "google",
    "grant": "authorization_code",
    "username": "a@example.com",
    "client_id": "id",
}


def test_non_oauth2_configurations_never_wait() -> None:
    assert oauth2_wait_reason(server(), None, False) is None


@pytest.mark.parametrize("state", [None, "not_authorized", "needs_reauthorization", "error"])
def test_authorization_code_waits_until_authorized(state: str | None) -> None:
    reason = oauth2_wait_reason(server(**OAUTH_CODE), state, True)
    assert reason is not None and "sign in again" in reason
    assert oauth2_wait_reason(server(**OAUTH_CODE), "authorized", True) is None


@pytest.mark.parametrize("state", [None, "not_authorized"])
def test_client_credentials_need_no_sign_in(state: str | None) -> None:
    app_only = server(**{**OAUTH_CODE, "grant": "client_credentials"})
    assert oauth2_wait_reason(app_only, state, True) is None
    assert oauth2_wait_reason(app_only, "needs_reauthorization", True) is not None


def test_authorized_but_without_a_token_provider_waits() -> None:
    reason = oauth2_wait_reason(server(**OAUTH_CODE), "authorized", False)
    assert reason is not None and "no OAuth2 token provider" in reason


def test_spacing_follows_messages_per_minute() -> None:
    assert spacing_s(Limits()) == 0.0
    assert spacing_s(Limits(messages_per_minute=30)) == 2.0
    assert spacing_s(Limits(messages_per_minute=120)) == 0.5


def test_pacer_spaces_slots_evenly_from_now() -> None:
    pacer = Pacer(spacing_s=2.0)
    assert [pacer.reserve(100.0, 60.0) for _ in range(3)] == [
        (100.0, True),
        (102.0, True),
        (104.0, True),
    ]
    # Idle for a while: the next slot is now, not in the past (no burst to catch up).
    assert pacer.reserve(200.0, 60.0) == (200.0, True)
    assert pacer.reserve(200.0, 60.0) == (202.0, True)


def test_pacer_gives_back_what_would_wait_past_the_limit_without_using_a_slot() -> None:
    pacer = Pacer(spacing_s=10.0)
    slots = [pacer.reserve(0.0, 25.0) for _ in range(5)]
    assert slots == [(0.0, True), (10.0, True), (20.0, True), (30.0, False), (30.0, False)]


def test_pacer_without_a_limit_sends_now() -> None:
    pacer = Pacer(spacing_s=0.0)
    assert {pacer.reserve(5.0, 1.0) for _ in range(10)} == {(5.0, True)}
