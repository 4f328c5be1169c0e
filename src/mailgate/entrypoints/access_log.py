"""The access log without secrets (README "Security model"): uvicorn writes every request's
path with its query string, and some carry credentials - the password reset link's
``token``, the OAuth2 callback's ``code`` and ``state``.

``redact_target`` keeps the parameter names and replaces the values of credential-like
parameters (and every value on the pages whose query is a credential); ``RedactingFilter``
applies it to uvicorn's access log records.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

REDACTED = "<redacted>"
SECRET_PARAMETERS = frozenset(
    {
        "token",
        "code",
        "state",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "password",
        "session_state",
        "key",
        "api_key",
    }
)
"""Query parameters whose value is redacted wherever they appear (case-insensitive)."""
SECRET_PATHS = ("/ui/reset-password", "/settings/oauth2code", "/api/v1/auth/password-reset")
"""Paths whose whole query is redacted, whatever its parameters are called."""


def redact_target(target: str) -> str:
    """``/ui/reset-password?token=mgr_x`` -> ``/ui/reset-password?token=<redacted>``."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    everything = unquote(path).rstrip("/") in SECRET_PATHS
    parts = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        secret = everything or unquote(name).strip().lower() in SECRET_PARAMETERS
        parts.append(f"{name}{eq}{REDACTED}" if secret and (eq or value) else item)
    return f"{path}?{'&'.join(parts)}"


class RedactingFilter(logging.Filter):
    """For ``uvicorn.access``: its records are ``'%s - "%s %s HTTP/%s" %d'`` with the request
    target as the third argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_target(args[2]), *args[3:])
        return True


def install() -> None:
    """Redact the access log of this process (call after uvicorn configured logging)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
