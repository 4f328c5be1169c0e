"""SMTP AUTH (RFC 4954): the mechanism chosen from what EHLO offers, PLAIN or LOGIN for a
password, XOAUTH2 for an OAuth2 access token (with one forced refresh after a ``535``).

A refused login is ``AUTH_FAILURE_OUTCOME`` (temporary): it is about the configuration, not
the message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from aiosmtplib.auth import auth_login_encode, auth_plain_encode, auth_xoauth2_encode

from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import AUTH_FAILURE_OUTCOME, SmtpReply
from mailgate.adapters.smtp.wire import RecordingSMTP
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import FailureKind
from mailgate.ports import TokenProvider

if TYPE_CHECKING:
    from mailgate.schemas.email_server import ResolvedServer


# ---- pure helpers ---------------------------------------------------------------------------


def xoauth2_string(user: str, token: str) -> str:
    """The XOAUTH2 initial response: base64("user=" u "\\x01auth=Bearer " t "\\x01\\x01").

    https://developers.google.com/gmail/imap/xoauth2-protocol, and Microsoft's
    "Authenticate an IMAP, POP or SMTP connection using OAuth".
    """
    return auth_xoauth2_encode(user, token).decode("ascii")


def decode_xoauth2_challenge(text: str) -> dict[str, Any] | None:
    """Gmail answers a bad token with ``334 <base64 JSON>`` ({"status": "401", ...})."""
    try:
        data = json.loads(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_challenge(challenge: dict[str, Any] | None) -> str:
    """What a decoded Gmail challenge adds to the 535 (``""`` without one)."""
    if challenge is None:
        return ""
    extra = f" (server says: status {challenge.get('status')}"
    if challenge.get("scope"):
        extra += f", scope {challenge.get('scope')}"
    return extra + ")"


def password_mechanism(offered: Sequence[str]) -> Literal["PLAIN", "LOGIN"] | None:
    """PLAIN (one round trip) when offered, else LOGIN; ``offered`` in lower case."""
    if "plain" in offered:
        return "PLAIN"
    if "login" in offered:
        return "LOGIN"
    return None


def mechanism_missing(what: str, offered: Sequence[str]) -> TransportError:
    listed = " ".join(offered).upper() or "none"
    return TransportError(
        Outcome.TEMPORARY,
        "auth",
        f"{what} (offered: {listed})",
        kind=FailureKind.AUTH_MECHANISM_MISSING,
    )


# ---- the AUTH step ---------------------------------------------------------------------------


async def authenticate(
    smtp: RecordingSMTP,
    server: ResolvedServer,
    tokens: TokenProvider | None,
    *,
    encrypted: bool,
    warnings: list[str],
) -> str:
    """Log in as the configuration says; the step's detail, or ``TransportError``."""
    cfg = server.config
    auth = cfg.authentication
    if auth.method == "none":
        return "not used (authentication: none)"
    if auth.method == "password" and not server.secrets.password:
        # A stored password is bound to the server it was entered for; re-pointing the
        # configuration dropped it (README "Security model").
        raise TransportError(
            Outcome.TEMPORARY,
            "auth",
            "no password is stored for this server: enter it again (a password stays with "
            "the server it was entered for)",
            kind=FailureKind.AUTH_FAILED,
        )
    if not encrypted:
        if cfg.starttls != "disabled":
            raise TransportError(
                Outcome.TEMPORARY,
                "auth",
                "refusing to send credentials over an unencrypted connection",
                kind=FailureKind.PLAINTEXT_AUTH_REFUSED,
            )
        warnings.append("credentials are sent unencrypted (starttls: disabled)")
    if not smtp.supports_extension("auth"):
        raise TransportError(
            Outcome.TEMPORARY,
            "auth",
            "the server does not offer authentication (no AUTH in its EHLO reply)",
            kind=FailureKind.AUTH_MISSING,
        )
    offered = [m.lower() for m in smtp.server_auth_methods]
    user = auth.username or ""
    if auth.method == "password":
        return await _password(smtp, user, server.secrets.password or "", offered)
    return await _xoauth2(smtp, user, offered, tokens, cfg.timeouts.command_s)


async def _password(smtp: RecordingSMTP, user: str, password: str, offered: list[str]) -> str:
    mechanism = password_mechanism(offered)
    if mechanism == "PLAIN":
        smtp.transcript.add_secret(auth_plain_encode(user, password).decode())
        reply = await _command(smtp, b"PLAIN", auth_plain_encode(user, password))
    elif mechanism == "LOGIN":
        enc_user, enc_password = auth_login_encode(user, password)
        reply = await _command(smtp, b"LOGIN", enc_user)
        if reply.code == 334:
            reply = await _continue(smtp, enc_password)
    else:
        raise mechanism_missing("the server offers neither PLAIN nor LOGIN", offered)
    if reply.code != 235:
        raise TransportError(
            AUTH_FAILURE_OUTCOME,
            "auth",
            f"{reply} ({mechanism})",
            reply=reply,
            kind=FailureKind.AUTH_FAILED if reply.code == 535 else FailureKind.REPLY,
        )
    return f"{reply} ({mechanism} as {user})"


async def _xoauth2(
    smtp: RecordingSMTP,
    user: str,
    offered: list[str],
    tokens: TokenProvider | None,
    limit_s: float,
) -> str:
    if "xoauth2" not in offered:
        raise mechanism_missing("the server does not offer XOAUTH2", offered)
    if tokens is None:
        raise TransportError(
            Outcome.TEMPORARY,
            "auth",
            "no OAuth2 access token: the configuration has not been authorized",
            kind=FailureKind.NO_TOKEN_PROVIDER,
        )
    reply: SmtpReply | None = None
    challenge: dict[str, Any] | None = None
    for attempt in (0, 1):
        token = await _token(tokens, force_refresh=attempt == 1, limit_s=limit_s)
        payload = xoauth2_string(user, token)
        smtp.transcript.add_secret(token)
        smtp.transcript.add_secret(payload)
        reply = await _command(smtp, b"XOAUTH2", payload.encode("ascii"))
        challenge = None
        if reply.code == 334:
            # Gmail: the error comes as a base64 JSON challenge; an empty line fetches
            # the final 535 (https://developers.google.com/gmail/imap/xoauth2-protocol).
            challenge = decode_xoauth2_challenge(reply.text)
            reply = await _continue(smtp, b"")
        if reply.code != 535:
            break
    assert reply is not None
    if reply.code != 235:
        raise TransportError(
            AUTH_FAILURE_OUTCOME,
            "auth",
            f"{reply}{describe_challenge(challenge)}",
            reply=reply,
            kind=FailureKind.AUTH_FAILED,
        )
    return f"{reply} (XOAUTH2 as {user})"


async def _token(tokens: TokenProvider, *, force_refresh: bool, limit_s: float) -> str:
    try:
        return await asyncio.wait_for(tokens.access_token(force_refresh=force_refresh), limit_s)
    except Exception as exc:
        raise TransportError(
            Outcome.TEMPORARY,
            "auth",
            f"could not get an OAuth2 access token: {exc}",
            kind=FailureKind.OAUTH2_TOKEN,
        ) from exc


async def _command(smtp: RecordingSMTP, mechanism: bytes, payload: bytes) -> SmtpReply:
    response = await smtp.execute_command(b"AUTH", mechanism, payload)
    return SmtpReply.parse(response.code, response.message)


async def _continue(smtp: RecordingSMTP, payload: bytes) -> SmtpReply:
    response = await smtp.execute_command(payload)
    return SmtpReply.parse(response.code, response.message)
