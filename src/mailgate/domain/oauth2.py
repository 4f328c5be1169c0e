"""OAuth2 token life, as pure rules: when to refresh, how to read a refusal, how long to wait;
and the values that cross the ``ports.TokenEndpoint`` port (a token set, two errors).

Errors::

    MailgateError
    └── TokenUnavailable            no access token now; the message is not failed
        ├── NeedsAuthorization      409  an administrator must act (re-authorize, fix secret)
        └── TokenEndpointDown       503  temporary: retry after ``retry_at`` (backoff)

    OAuth2ProviderError             what a token endpoint answered (the port's errors)
    ├── TokenRefused                the provider said no, with its RFC 6749 ``error``
    └── EndpointUnreachable         network, TLS, 5xx, or an answer that is not a token
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from mailgate.domain.errors import MailgateError

# Use an access token until this long before it expires: a token that expires between the
# fetch and the SMTP AUTH would fail the delivery for nothing.
EXPIRY_MARGIN = timedelta(minutes=5)
# The keeper refreshes a refresh token unused this long. Microsoft's refresh tokens of web
# apps lapse after 90 days without use (identity platform "Refresh tokens" doc), Google's
# after 6 months; a weekly refresh keeps both alive with room for outages.
KEEPALIVE_AFTER = timedelta(days=7)
# Warn this long before the client secret expires (when the provider tells us).
SECRET_WARNING = timedelta(days=30)
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)


class OAuth2State(StrEnum):
    NOT_AUTHORIZED = "not_authorized"
    AUTHORIZED = "authorized"
    NEEDS_REAUTHORIZATION = "needs_reauthorization"
    ERROR = "error"


class TokenUnavailable(MailgateError):
    status = 503
    title = "OAuth2 token unavailable"


class NeedsAuthorization(TokenUnavailable):
    """The grant is gone or the app is misconfigured; retrying does not help."""

    status = 409
    title = "OAuth2 authorization needed"


REFRESH_CLAIM = "refresh_claim"
"""Among a configuration's stored tokens while a process refreshes them:
``{"id": ..., "until": ...}`` (``services.oauth2.tokens.OAuth2Tokens.refresh_locked``)."""


class TokenEndpointDown(TokenUnavailable):
    status = 503
    title = "Token endpoint unavailable"

    def __init__(self, detail: str, retry_at: datetime) -> None:
        super().__init__(detail)
        self.retry_at = retry_at


@dataclass(frozen=True)
class TokenSet:
    """A token endpoint's answer (RFC 6749 section 5.1), with absolute times."""

    access_token: str
    expires_at: datetime
    refresh_token: str | None
    scope: str | None
    client_secret_expires_at: datetime | None = None


class OAuth2ProviderError(Exception):
    """Base of the token endpoint's errors. Texts never carry secrets or tokens."""


class TokenRefused(OAuth2ProviderError):
    def __init__(self, error: str, description: str | None, status: int | None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description or error
        self.status = status


class EndpointUnreachable(OAuth2ProviderError):
    pass


class Refusal(StrEnum):
    REAUTHORIZE = "reauthorize"  # the user must consent again
    CONFIGURATION = "configuration"  # the admin must fix client id/secret/scope
    TEMPORARY = "temporary"


def classify_refusal(error: str) -> Refusal:
    """Read the ``error`` of a token endpoint answer (RFC 6749 section 5.2).

    Branch on ``error``, never on the description: Microsoft's AADSTS texts change.
    """
    if error in {"invalid_grant", "interaction_required", "consent_required", "login_required"}:
        return Refusal.REAUTHORIZE
    if error in {"temporarily_unavailable", "server_error", "slow_down"}:
        return Refusal.TEMPORARY
    return Refusal.CONFIGURATION


def backoff(failures: int) -> timedelta:
    """Wait after the n-th consecutive failure to reach the token endpoint (1, 2, ...)."""
    step: timedelta = BACKOFF_BASE * (2 ** max(0, min(failures, 20) - 1))
    return min(step, BACKOFF_MAX)


def needs_refresh(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or expires_at - EXPIRY_MARGIN <= now


def secret_warning(expires_at: datetime | None, now: datetime) -> str | None:
    if expires_at is None:
        return None
    if expires_at <= now:
        return f"the client secret expired at {expires_at:%Y-%m-%d}; create a new one"
    if expires_at - SECRET_WARNING <= now:
        return (
            f"the client secret expires at {expires_at:%Y-%m-%d}; create a new one and "
            "update this configuration before then"
        )
    return None
