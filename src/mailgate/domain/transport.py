"""What any transport (SMTP, an HTTP mail API, a remote agent) reports about a failure or a
diagnosis step, in words services can branch on. Pure values.

- ``Step``: one step of a diagnosis (``resolve`` ... ``data`` for SMTP; ``token`` and ``send``
  for the HTTP APIs), with its result and a detail for the admin.
- ``FailureKind``: what went wrong, so that hints and callers need not read error texts.
- ``Reply``: the peer's answer (an SMTP reply, or an HTTP status with its error code).
- ``Failure``: where (the step) and how (the kind, the reply) a transport gave up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class FailureKind(StrEnum):
    """Why a transport step failed. A ``StrEnum``: it crosses JSON (the remote agent's
    reports) as its value and compares equal to it."""

    DNS = "dns"
    REFUSED = "refused"
    """Nothing accepts connections on that host and port."""
    DESTINATION_DENIED = "destination_denied"
    """The installation's outbound policy does not allow connecting to the address (nothing
    was sent)."""
    TIMEOUT = "timeout"
    NETWORK = "network"
    CERT_UNTRUSTED = "cert_untrusted"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    CERT_EXPIRED = "cert_expired"
    TLS_FAILED = "tls_failed"
    TLS_CONFIG = "tls_config"
    """The configuration's own TLS material (CA, client certificate or key) is unusable."""
    STARTTLS_MISSING = "starttls_missing"
    AUTH_MISSING = "auth_missing"
    AUTH_MECHANISM_MISSING = "auth_mechanism_missing"
    PLAINTEXT_AUTH_REFUSED = "plaintext_auth_refused"
    """mailgate itself refused to send credentials over an unencrypted connection."""
    AUTH_FAILED = "auth_failed"
    OAUTH2_TOKEN = "oauth2_token"
    """No access token could be obtained (the token provider's error is the cause)."""
    NO_TOKEN_PROVIDER = "no_token_provider"
    DISCONNECTED = "disconnected"
    TOO_LARGE = "too_large"
    SMTPUTF8 = "smtputf8"
    """A non-ASCII address, and the server lacks SMTPUTF8 (RFC 6531)."""
    REPLY = "reply"
    """The peer refused with a reply; the reply itself says why."""
    PROTOCOL = "protocol"
    """Anything else the client library raised."""
    REMOTE = "remote"
    """A remote agent's report could not be read."""
    # The HTTP mail APIs (Microsoft Graph, Gmail API); their hints depend on the API.
    THROTTLED = "throttled"
    """The API is throttling (429, 503, rate limit reasons): wait, as ``Retry-After`` says."""
    WRONG_AUDIENCE = "wrong_audience"
    """The access token is for another API (e.g. an SMTP token sent to Graph)."""
    ACCESS_DENIED = "access_denied"
    """The API refused the app or user the permission (403, or a token without it)."""
    MAILBOX_NOT_FOUND = "mailbox_not_found"
    """The API does not know the mailbox (Graph 404 ErrorInvalidUser)."""


@dataclass(frozen=True)
class Reply:
    """The peer's answer: an SMTP reply code with its RFC 3463 enhanced status code and text,
    or (for an HTTP mail API) the status code and the API's error text."""

    code: int | None
    enhanced: str | None
    text: str

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "enhanced": self.enhanced, "text": self.text}


@dataclass(frozen=True)
class Step:
    """One diagnosis step as the admin sees it (README "Test an e-mail server")."""

    step: str
    ok: bool
    ms: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ok": self.ok, "ms": self.ms, "detail": self.detail}


@dataclass(frozen=True)
class Failure:
    """Where and how a transport gave up; ``detail`` is scrubbed of secrets."""

    step: str
    kind: FailureKind
    reply: Reply | None = None
    detail: str = ""
