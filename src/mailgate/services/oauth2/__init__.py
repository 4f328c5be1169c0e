"""OAuth2 for e-mail servers, one module per job:

- ``authorization``: the authorization code grant (authorize URL, single-use state, PKCE, the
  callback's code exchange) and forgetting tokens;
- ``tokens``: a usable access token, refresh with rotation and client credentials under the
  row lock, and the transport's ``OAuth2TokenProvider``;
- ``alerts``: the tenant admins' notices when an authorization breaks;
- ``keeper``: what the background token keeper does each round.

The token endpoint reaches them through ``ports.TokenEndpoint``, the mailer through
``ports.SystemMailer`` (alerts only). Dependencies, none circular::

    authorization -> tokens -> alerts -> SystemMailer -> (token providers of) tokens
    keeper -> tokens, alerts
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.services.oauth2.alerts import OAuth2Alerts
from mailgate.services.oauth2.authorization import OAuth2AuthorizationFlow
from mailgate.services.oauth2.keeper import OAuth2Keeper
from mailgate.services.oauth2.tokens import OAuth2Tokens


@dataclass(frozen=True)
class OAuth2:
    """The OAuth2 services of one installation, built together by the composition root."""

    authorization: OAuth2AuthorizationFlow
    tokens: OAuth2Tokens
    alerts: OAuth2Alerts
    keeper: OAuth2Keeper
