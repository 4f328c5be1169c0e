"""Forgotten passwords: a single-use link, valid for one hour, sent by the system e-mail server.

Only the SHA-256 of the token is stored (``password_resets``); the link carries the token.
Asking never reveals whether an account exists: the caller answers 202
either way and sends the mail after the response, so timing does not tell either.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import PasswordReset, User
from mailgate.domain.clock import Clock
from mailgate.domain.errors import ValidationFailed
from mailgate.services.identity import Identity, new_token, token_hash

log = logging.getLogger("mailgate.password_reset")

RESET_TTL = timedelta(hours=1)
# At most one mail per user in this interval: the form cannot be used to flood a mailbox.
RESEND_AFTER = timedelta(minutes=1)
RESET_PREFIX = "mgr_"
INVALID = "this reset link is invalid, used or expired; ask for a new one"


def request_reset(db: Session, clock: Clock, username: str) -> tuple[User, str] | None:
    """A new token for ``username``, or ``None`` (unknown user, no address, asked too often).
    Every request that sends nothing is logged at WARNING (the asker always gets 202), without
    the name typed: it may be a password typed into the wrong field."""
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        log.warning("password reset not sent: no user of that name")
        return None
    if not user.email:
        log.warning(
            "password reset for user id %s not sent: the user has no e-mail address", user.id
        )
        return None
    now = clock()
    recent = db.scalar(
        select(PasswordReset.token_hash).where(
            PasswordReset.user_id == user.id,
            PasswordReset.used_at.is_(None),
            PasswordReset.created_at > now - RESEND_AFTER,
        )
    )
    if recent is not None:
        log.warning(
            "password reset for user id %s not sent: a link went out less than %s ago",
            user.id,
            RESEND_AFTER,
        )
        return None
    token = new_token(RESET_PREFIX)
    db.add(
        PasswordReset(
            token_hash=token_hash(token),
            user_id=user.id,
            created_at=now,
            expires_at=now + RESET_TTL,
        )
    )
    db.flush()
    return user, token


def withdraw_unsent(db: Session, clock: Clock, token: str) -> None:
    """The mail with ``token`` could not be sent: the link is spent (nobody has it) and does
    not count against the one-per-minute limit, so the next request sends."""
    db.execute(
        update(PasswordReset)
        .where(PasswordReset.token_hash == token_hash(token), PasswordReset.used_at.is_(None))
        .values(used_at=clock())
    )


def confirm_reset(db: Session, clock: Clock, identity: Identity, token: str, password: str) -> User:
    """Set the new password and use up the token (and every other open token of the user)."""
    now = clock()
    row = db.get(PasswordReset, token_hash(token))
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise ValidationFailed.one("token", INVALID)
    user = db.get(User, row.user_id)
    if user is None:
        raise ValidationFailed.one("token", INVALID)
    # Hashed between two transactions; the token is checked again in the second.
    password_hash = identity.hash_new_password(db, password)
    row = db.get(PasswordReset, token_hash(token), populate_existing=True)
    if row is None or row.used_at is not None:
        raise ValidationFailed.one("token", INVALID)
    identity.set_password(db, user, password, password_hash=password_hash)  # ends sessions
    db.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
        .values(used_at=now)
    )
    return user


RESET_SUBJECT = "Choose a new mailgate password"


def reset_text(username: str, link: str) -> str:
    return (
        f"Hello {username},\n\n"
        "someone (hopefully you) asked to reset your mailgate password.\n"
        "Open this link within one hour to choose a new one. It works only once:\n\n"
        f"  {link}\n\n"
        "If you did not ask for this, ignore this message; your password stays as it is.\n"
    )
