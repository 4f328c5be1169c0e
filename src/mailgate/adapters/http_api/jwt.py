"""What an access token says about itself, for the server test's ``token`` step.

Microsoft's access tokens for Graph are JWTs (RFC 7519); mailgate reads their claims to tell
the admin which API the token is for (``aud``) and what it may do (``scp`` for a delegated
grant, ``roles`` for app-only) - never to trust them: only the API validates a token. Google's
tokens are opaque. Pure functions.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def decode_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT (JWS compact form), unverified; ``None`` for anything else."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None


# Who the token speaks for: the user (delegated), else the app (Microsoft's claim names).
_SUBJECT_CLAIMS = ("upn", "preferred_username", "unique_name", "email", "app_displayname", "appid")


@dataclass(frozen=True)
class TokenSummary:
    """The claims the admin needs, read from a JWT access token."""

    audience: str | None
    scopes: list[str] = field(default_factory=list)
    """Delegated permissions (``scp``, space-separated in the token)."""
    roles: list[str] = field(default_factory=list)
    """Application permissions (``roles``) of an app-only token."""
    subject: str | None = None
    """The signed-in user (``upn``, ``preferred_username``, ``unique_name``) or the app."""
    expires_at: datetime | None = None

    @classmethod
    def of(cls, claims: dict[str, Any]) -> TokenSummary:
        aud = claims.get("aud")
        if isinstance(aud, list):
            aud = aud[0] if aud else None
        scp = claims.get("scp")
        roles = claims.get("roles")
        subject = next((str(claims[k]) for k in _SUBJECT_CLAIMS if claims.get(k)), None)
        exp = claims.get("exp")
        return cls(
            audience=str(aud) if aud is not None else None,
            scopes=scp.split() if isinstance(scp, str) else [],
            roles=[str(r) for r in roles] if isinstance(roles, list) else [],
            subject=subject,
            expires_at=datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None,
        )

    def describe(self) -> str:
        """``audience https://graph.microsoft.com, roles Mail.Send (app), until ...``"""
        parts = [f"audience {self.audience or '(none)'}"]
        if self.roles or not self.scopes:
            parts.append(f"roles {', '.join(self.roles) or '(none)'}")
        if self.scopes:
            parts.append(f"scopes {', '.join(self.scopes)}")
        if self.subject:
            parts.append(f"for {self.subject}")
        if self.expires_at is not None:
            parts.append(f"valid until {self.expires_at:%Y-%m-%d %H:%M:%S}Z")
        return ", ".join(parts)
