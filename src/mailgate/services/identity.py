"""Users, logins, sessions, API keys, and turning a credential into a ``Principal``.

Passwords are hashed with Argon2id (memory-hard). Login tokens and API keys are 256-bit random
strings; only their SHA-256 is stored (a fast hash is right for high-entropy tokens).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import (
    ApiKey,
    AuthSession,
    LoginThrottle,
    Membership,
    Tenant,
    User,
)
from mailgate.domain.access import Principal, Role
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import (
    Conflict,
    FieldError,
    NotFound,
    Throttled,
    Unauthenticated,
    ValidationFailed,
)
from mailgate.services.caps import check_room

_SESSION_LOOKUP = (
    select(
        AuthSession.id,
        AuthSession.csrf_token,
        AuthSession.expires_at,
        AuthSession.user_id,
        User.username,
        User.system_admin,
    )
    .join(User, User.id == AuthSession.user_id)
    .where(AuthSession.token_hash == bindparam("h"))
)
_MEMBERSHIPS = select(Membership.tenant_id, Membership.role).where(
    Membership.user_id == bindparam("user_id")
)
_API_KEY_LOOKUP = select(
    ApiKey.id, ApiKey.name, ApiKey.role, ApiKey.tenant_id, ApiKey.last_used_at
).where(ApiKey.token_hash == bindparam("h"))


def api_key_principal(key_id: str, name: str, role: str, tenant_id: int) -> Principal:
    return Principal(
        kind="api_key", name=f"apikey:{name}", api_key_id=key_id, roles={tenant_id: Role(role)}
    )


def touch_due(last_used_at: datetime | None, now: datetime) -> bool:
    """An API key's ``last_used_at`` is written at most once a minute: no write per request."""
    return last_used_at is None or (now - last_used_at).total_seconds() > 60


SESSION_PREFIX = "mgs_"
API_KEY_PREFIX = "mgk_"
# RFC 9106's second recommended option (argon2-cffi's default); settings may tune the cost.
_DEFAULT_HASHER = PasswordHasher()
MIN_PASSWORD = 8


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_password(password: str, hasher: PasswordHasher = _DEFAULT_HASHER) -> str:
    return hasher.hash(password)


def check_password_strength(password: str, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD:
        raise ValidationFailed.one(field, f"use at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise ValidationFailed.one(field, "at most 1024 characters")


def verify_password(
    user: User | None, password: str, hasher: PasswordHasher = _DEFAULT_HASHER
) -> bool:
    try:
        hasher.verify(user.password_hash if user else _dummy_hash(hasher), password)
    except (VerificationError, InvalidHashError):
        return False
    return user is not None


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    # Verifying against this keeps the time of "unknown user" equal to "wrong password".
    return hasher.hash("mailgate-dummy-password")


class Identity:
    def __init__(
        self,
        clock: Clock,
        session_hours: int,
        max_failures: int,
        window_s: int,
        hasher: PasswordHasher = _DEFAULT_HASHER,
        *,
        max_api_keys: int = 100,
        max_failures_per_address: int = 20,
        max_resets_per_address: int = 10,
    ):
        self.max_api_keys = max_api_keys
        self.max_failures_per_address = max_failures_per_address
        self.max_resets_per_address = max_resets_per_address
        self.clock = clock
        self.hasher = hasher
        self.session_hours = session_hours
        self.max_failures = max_failures
        self.window_s = window_s

    def password_matches(self, password_hash: str, password: str) -> bool:
        """Argon2 verification of a stored hash; call it outside a transaction."""
        try:
            return bool(self.hasher.verify(password_hash, password))
        except (VerificationError, InvalidHashError):
            return False

    # ---- login -----------------------------------------------------------------------------

    def _throttle_key(self, username: str, client: str) -> str:
        return f"{username.lower()}|{client}"[:200]

    def _check_throttle(self, db: Session, key: str, limit: int | None = None) -> None:
        row = db.get(LoginThrottle, key)
        if row is None:
            return
        elapsed = (self.clock() - row.window_start).total_seconds()
        if elapsed >= self.window_s:
            return
        if row.failures >= (limit or self.max_failures):
            raise Throttled(
                "too many failed sign-ins; wait before trying again",
                retry_after_s=max(1, int(self.window_s - elapsed)),
            )

    def _record_failure(self, db: Session, key: str) -> None:
        now = self.clock()
        row = db.get(LoginThrottle, key)
        if row is None:
            db.add(LoginThrottle(key=key, failures=1, window_start=now))
        elif (now - row.window_start).total_seconds() >= self.window_s:
            row.failures, row.window_start = 1, now
        else:
            row.failures += 1

    @staticmethod
    def _address_key(client: str, what: str = "sign-in") -> str:
        # "|" is in no user or tenant name: no collision with the per-name keys.
        return f"|{what}|{client}"[:200]

    def _check_address(self, db: Session, client: str) -> None:
        """Guesses from one client address across many names (password spraying)."""
        self._check_throttle(db, self._address_key(client), self.max_failures_per_address)

    # The same throttle for other sign-ins (SMTP AUTH): ``name`` is what the client signs in as.

    def check_sign_in_throttle(self, db: Session, name: str, client: str) -> None:
        """Raise ``Throttled`` while ``name`` from ``client``, or ``client`` with any name,
        has failed too often."""
        self._check_throttle(db, self._throttle_key(name, client))
        self._check_address(db, client)

    def record_sign_in_failure(self, db: Session, name: str, client: str) -> None:
        self._record_failure(db, self._throttle_key(name, client))
        self._record_failure(db, self._address_key(client))

    def has_sign_in_failures(self, conn: Connection, name: str, client: str) -> bool:
        """Failures of ``name`` from ``client`` are on record (a read: a read-only
        connection will do)."""
        key = self._throttle_key(name, client)
        found = conn.execute(select(LoginThrottle.key).where(LoginThrottle.key == key))
        return found.first() is not None

    def clear_sign_in_failures(self, db: Session, name: str, client: str) -> None:
        # The address's count stays: one account that works must not reset a spraying budget.
        key = self._throttle_key(name, client)
        if db.get(LoginThrottle, key) is not None:  # no write when there is nothing to clear
            db.execute(delete(LoginThrottle).where(LoginThrottle.key == key))

    def check_reset_request(self, db: Session, client: str) -> None:
        """Count a password reset request from ``client``; ``Throttled`` beyond
        ``max_resets_per_address`` in the window (the answer says nothing about accounts)."""
        key = self._address_key(client, "reset")
        self._check_throttle(db, key, self.max_resets_per_address)
        self._record_failure(db, key)

    def login(
        self, db: Session, username: str, password: str, client: str
    ) -> tuple[str, User, AuthSession]:
        """Returns (token, user, session). Raises ``Unauthenticated`` or ``Throttled``.

        The caller must commit even on failure, so that the failure counter is kept. The
        password is checked between two transactions: Argon2 is slow on purpose (tens of
        milliseconds, many MiB), and on SQLite an open transaction holds the one write lock,
        so hashing inside one made every other tenant's request wait for sign-ins.
        """
        key = self._throttle_key(username, client)
        self._check_throttle(db, key)
        self._check_address(db, client)
        user = db.scalar(select(User).where(User.username == username))
        db.commit()  # no transaction (no write lock) while hashing
        valid = verify_password(user, password, self.hasher)
        rehashed = None
        if valid and user is not None and self.hasher.check_needs_rehash(user.password_hash):
            rehashed = hash_password(password, self.hasher)
        if not valid:
            self._record_failure(db, key)
            self._record_failure(db, self._address_key(client))
            raise Unauthenticated("wrong user name or password")
        assert user is not None
        # Guesses that failed while this one was hashed count too.
        self._check_throttle(db, key)
        self._check_address(db, client)
        db.execute(delete(LoginThrottle).where(LoginThrottle.key == key))
        if rehashed is not None:
            user.password_hash = rehashed
        token = new_token(SESSION_PREFIX)
        now = self.clock()
        sess = AuthSession(
            token_hash=token_hash(token),
            csrf_token=secrets.token_urlsafe(24),
            user_id=user.id,
            created_at=now,
            expires_at=now + timedelta(hours=self.session_hours),
        )
        db.add(sess)
        db.flush()
        return token, user, sess

    def logout(self, db: Session, principal: Principal) -> None:
        if principal.session_id is not None:
            db.execute(delete(AuthSession).where(AuthSession.id == principal.session_id))

    def authenticate(self, db: Session, token: str) -> Principal:
        principal, touch = self.authenticate_read_only(db, token)
        if touch is not None:
            self.touch_api_keys(db, [touch])
        return principal

    def touch_api_keys(self, db: Session, key_ids: list[str]) -> None:
        db.execute(update(ApiKey).where(ApiKey.id.in_(key_ids)).values(last_used_at=self.clock()))

    def authenticate_read_only(
        self, db: Session | Connection, token: str
    ) -> tuple[Principal, str | None]:
        """The caller, and the id of an API key whose ``last_used_at`` is due to be updated
        (at most once a minute, so that there is no write per request): the caller writes
        it with ``touch_api_keys``.

        Plain column queries, no ORM objects: every API request pays for this."""
        conn = db.connection() if isinstance(db, Session) else db
        now = self.clock()
        if token.startswith(SESSION_PREFIX):
            found = conn.execute(_SESSION_LOOKUP, {"h": token_hash(token)}).first()
            if found is None or found.expires_at <= now:
                raise Unauthenticated("session expired or unknown; sign in again")
            roles = conn.execute(_MEMBERSHIPS, {"user_id": found.user_id}).all()
            principal = Principal(
                kind="user",
                name=found.username,
                user_id=found.user_id,
                system_admin=found.system_admin,
                roles={tid: Role(role) for tid, role in roles},
                session_id=found.id,
                csrf_token=found.csrf_token,
            )
            return principal, None
        if token.startswith(API_KEY_PREFIX):
            key = conn.execute(_API_KEY_LOOKUP, {"h": token_hash(token)}).first()
            if key is None:
                raise Unauthenticated("unknown or revoked API key")
            return api_key_principal(key.id, key.name, key.role, key.tenant_id), (
                key.id if touch_due(key.last_used_at, now) else None
            )
        raise Unauthenticated("unknown credential")

    def principal_for_user(
        self, db: Session, user: User, session: AuthSession | None = None
    ) -> Principal:
        rows = db.execute(
            select(Membership.tenant_id, Membership.role).where(Membership.user_id == user.id)
        ).all()
        return Principal(
            kind="user",
            name=user.username,
            user_id=user.id,
            system_admin=user.system_admin,
            roles={tid: Role(role) for tid, role in rows},
            session_id=session.id if session else None,
            csrf_token=session.csrf_token if session else None,
        )

    # ---- users -----------------------------------------------------------------------------

    def create_user(
        self,
        db: Session,
        *,
        username: str,
        password: str,
        email: str | None = None,
        roles: dict[str, str] | None = None,
        system_admin: bool = False,
        password_hash: str | None = None,
    ) -> User:
        """``password_hash``: from ``hash_new_password``, hashed before this transaction."""
        if password_hash is None:
            check_password_strength(password)
        if db.scalar(select(User.id).where(User.username == username)) is not None:
            raise Conflict(f"user {username!r} exists already")
        now = self.clock()
        user = User(
            username=username,
            email=email,
            password_hash=password_hash or hash_password(password, self.hasher),
            system_admin=system_admin,
            created_at=now,
            updated_at=now,
        )
        db.add(user)
        db.flush()
        if roles:
            self.set_roles(db, user, roles)
        return user

    def set_roles(self, db: Session, user: User, roles: dict[str, str]) -> None:
        tenants = {t.name: t for t in db.scalars(select(Tenant).where(Tenant.name.in_(roles)))}
        errors = [
            FieldError(f"roles.{name}", "no such tenant") for name in roles if name not in tenants
        ]
        if errors:
            raise ValidationFailed(errors)
        db.execute(delete(Membership).where(Membership.user_id == user.id))
        for name, role in roles.items():
            db.add(Membership(user_id=user.id, tenant_id=tenants[name].id, role=Role(role).value))
        db.flush()

    def get_user(self, db: Session, username: str) -> User:
        user = db.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"user {username!r} not found")
        return user

    def user_view(self, db: Session, user: User) -> dict[str, Any]:
        rows = db.execute(
            select(Tenant.name, Membership.role)
            .join(Membership, Membership.tenant_id == Tenant.id)
            .where(Membership.user_id == user.id)
            .order_by(Tenant.name)
        ).all()
        return {
            "username": user.username,
            "email": user.email,
            "system_admin": user.system_admin,
            "roles": {name: role for name, role in rows},
            "created_at": isoformat(user.created_at),
        }

    def hash_new_password(self, db: Session, password: str, field: str = "password") -> str:
        """Check the strength and hash ``password`` outside a transaction: ``db``'s open
        transaction, which may only have read, ends first (on SQLite it holds the write lock,
        and Argon2 is slow on purpose)."""
        check_password_strength(password, field)
        if not (db.new or db.dirty or db.deleted):
            db.commit()
        return hash_password(password, self.hasher)

    def set_password(
        self, db: Session, user: User, password: str, *, password_hash: str | None = None
    ) -> None:
        """``password_hash``: from ``hash_new_password``, hashed before this transaction."""
        if password_hash is None:
            check_password_strength(password)
            password_hash = hash_password(password, self.hasher)
        user.password_hash = password_hash
        user.updated_at = self.clock()
        # A new password ends every existing session of that user.
        db.execute(delete(AuthSession).where(AuthSession.user_id == user.id))

    # ---- API keys --------------------------------------------------------------------------

    def create_api_key(
        self, db: Session, tenant: Tenant, name: str, role: Role, created_by: str
    ) -> tuple[ApiKey, str]:
        check_room(
            db,
            ApiKey,
            tenant.id,
            self.max_api_keys,
            "API keys",
            "MAILGATE_MAX_API_KEYS_PER_TENANT",
        )
        token = new_token(API_KEY_PREFIX)
        key = ApiKey(
            id=uuid.uuid4().hex,
            tenant_id=tenant.id,
            name=name,
            role=role.value,
            token_hash=token_hash(token),
            created_at=self.clock(),
            created_by=created_by,
        )
        db.add(key)
        db.flush()
        return key, token

    @staticmethod
    def api_key_view(key: ApiKey) -> dict[str, Any]:
        return {
            "id": key.id,
            "name": key.name,
            "role": key.role,
            "created_at": isoformat(key.created_at),
            "created_by": key.created_by,
            "last_used_at": isoformat(key.last_used_at),
        }
