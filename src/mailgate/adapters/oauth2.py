"""The token endpoint client (``ports.TokenEndpoint``): authorize URL, code exchange, refresh,
client credentials.

The token exchange is Authlib's (``authlib.integrations.httpx_client.OAuth2Client``); this
module gets the endpoints and scope from ``domain/oauth2_providers.py`` and turns answers into
a ``TokenSet`` or one of two errors: ``TokenRefused`` (the provider said no, with its
``error``) and ``EndpointUnreachable`` (network, TLS, 5xx, or an answer that is not a token).
"""

from __future__ import annotations

import math
import ssl
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import certifi
import httpx
from authlib.integrations.base_client import OAuthError

with warnings.catch_warnings():
    # Authlib 1.9 prefers the "httpx2" fork and warns when it falls back to httpx, on every
    # command. We use httpx (its exceptions and SSL context below); the client API is the same.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client

from mailgate.adapters.outbound import (
    DEADLINE_PASSED,
    PolicySource,
    denied_reason,
    guarded_transport,
)
from mailgate.domain.oauth2 import EndpointUnreachable, TokenRefused, TokenSet
from mailgate.domain.oauth2_providers import Endpoints
from mailgate.domain.outbound import OutboundPolicy


class OAuth2Http:
    """Talks to token endpoints through Authlib (implements ``ports.TokenEndpoint``).
    One instance per process is enough.

    ``timeout_s`` is the *total* deadline of one token request (connect, TLS, sending,
    every byte of the answer): a tenant's endpoint that drips its answer is cut off then.
    Connections go only to addresses the outbound ``policy`` allows."""

    def __init__(
        self,
        ca_bundle: Path | None = None,
        timeout_s: float = 30.0,
        policy: PolicySource = OutboundPolicy,
    ) -> None:
        self._verify = ssl.create_default_context(cafile=certifi.where())
        if ca_bundle is not None:
            self._verify.load_verify_locations(cafile=str(ca_bundle))
        self._timeout = timeout_s
        self._policy = policy

    def _client(self, client_id: str, client_secret: str | None, **kw: Any) -> OAuth2Client:
        """A client for one exchange: its deadline starts now."""
        return OAuth2Client(
            client_id=client_id,
            client_secret=client_secret,
            # Both Microsoft and Google document the secret in the form body.
            token_endpoint_auth_method="client_secret_post",
            code_challenge_method="S256",
            transport=guarded_transport(self._verify, self._policy, total_s=self._timeout),
            timeout=self._timeout,
            follow_redirects=False,
            **kw,
        )

    def authorization_url(
        self,
        ep: Endpoints,
        *,
        client_id: str,
        redirect_uri: str,
        state: str,
        code_verifier: str,
    ) -> str:
        if not ep.authorize_url:
            raise ValueError("this configuration has no authorize URL")
        with self._client(client_id, None, redirect_uri=redirect_uri, scope=ep.scope) as client:
            url, _ = client.create_authorization_url(
                ep.authorize_url, state=state, code_verifier=code_verifier, **ep.authorize_params
            )
        return str(url)

    def exchange_code(
        self,
        ep: Endpoints,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        code: str,
        code_verifier: str,
        now: datetime,
    ) -> TokenSet:
        with self._client(client_id, client_secret, redirect_uri=redirect_uri) as client:
            return self._call(
                now,
                client.fetch_token,
                ep.token_url,
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
            )

    def refresh(
        self,
        ep: Endpoints,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        now: datetime,
    ) -> TokenSet:
        scope = ep.scope if ep.send_scope_on_refresh else None
        with self._client(client_id, client_secret, scope=scope) as client:
            tokens = self._call(
                now, client.refresh_token, ep.token_url, refresh_token=refresh_token
            )
        if tokens.refresh_token is None:
            # No rotation by this provider (Google): the old refresh token stays valid.
            tokens = TokenSet(
                tokens.access_token,
                tokens.expires_at,
                refresh_token,
                tokens.scope,
                tokens.client_secret_expires_at,
            )
        return tokens

    def client_credentials(
        self, ep: Endpoints, *, client_id: str, client_secret: str, now: datetime
    ) -> TokenSet:
        with self._client(client_id, client_secret, scope=ep.scope) as client:
            return self._call(
                now, client.fetch_token, ep.token_url, grant_type="client_credentials"
            )

    def _call(self, now: datetime, fn: Any, *args: Any, **kwargs: Any) -> TokenSet:
        try:
            answer = fn(*args, **kwargs)
        except OAuthError as exc:
            raise TokenRefused(str(exc.error), exc.description, None) from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            raise EndpointUnreachable(f"the token endpoint answered HTTP {status}") from None
        except httpx.HTTPError as exc:
            if (reason := denied_reason(exc)) is not None:
                raise EndpointUnreachable(f"the token endpoint is not allowed: {reason}") from None
            if DEADLINE_PASSED in str(exc):
                raise EndpointUnreachable(
                    f"the token endpoint sent no complete answer within {self._timeout:g} s "
                    "(the total deadline, MAILGATE_OAUTH_TIMEOUT_S)"
                ) from None
            raise EndpointUnreachable(
                f"the token endpoint is unreachable ({type(exc).__name__}: {exc})"
            ) from None
        except ValueError as exc:
            raise EndpointUnreachable(f"the token endpoint answered no token ({exc})") from None
        except Exception as exc:  # an answer Authlib could not handle: this request failed
            raise EndpointUnreachable(
                f"the token endpoint's answer could not be read ({type(exc).__name__})"
            ) from None
        return parse_token(dict(answer) if isinstance(answer, dict) else answer, now)


_MAX_LIFETIME_S = 366 * 24 * 3600
"""No access token is trusted for longer than a year, whatever ``expires_in`` says."""


def _number(value: Any) -> float | None:
    """A JSON number (or a numeric string, as some endpoints send) that is finite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def parse_token(data: dict[str, Any], now: datetime) -> TokenSet:
    """A token endpoint's JSON (RFC 6749 section 5.1) as a ``TokenSet``.

    The endpoint may be any URL a tenant chose: every field is checked, and values out of
    range are clamped or ignored (``expires_in`` of 1e30 once ended the keeper's rounds
    for every tenant with an ``OverflowError``)."""
    if not isinstance(data, dict):
        raise EndpointUnreachable("the token endpoint answered no JSON object")
    access = data.get("access_token")
    if not isinstance(access, str) or not access or len(access) > 64 * 1024:
        raise EndpointUnreachable("the token endpoint answered without a usable access_token")
    lifetime = _number(data.get("expires_in"))
    expires_in = 3600 if lifetime is None or lifetime <= 0 else min(lifetime, _MAX_LIFETIME_S)
    refresh = data.get("refresh_token")
    secret_expiry = None
    # client_secret_expires_at is RFC 7591 client metadata (0 = never); some providers
    # return it with tokens, and then we can warn before the secret runs out.
    raw_expiry = _number(data.get("client_secret_expires_at"))
    if raw_expiry is not None and raw_expiry > 0:
        try:
            secret_expiry = datetime.fromtimestamp(raw_expiry, UTC)
        except (OverflowError, ValueError, OSError):
            secret_expiry = None  # beyond what a date can hold: as good as never
    scope = data.get("scope")
    return TokenSet(
        access_token=access,
        expires_at=now + timedelta(seconds=int(expires_in)),
        refresh_token=refresh
        if isinstance(refresh, str) and 0 < len(refresh) <= 64 * 1024
        else None,
        scope=scope if isinstance(scope, str) and len(scope) <= 4096 else None,
        client_secret_expires_at=secret_expiry,
    )
