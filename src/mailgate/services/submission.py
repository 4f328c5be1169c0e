"""SMTP submission (README "SMTP submission"): what the listener asks of the services.

The listener (``entrypoints/smtp/``) speaks the protocol; the decisions are here:

- ``SmtpSubmission.authenticate``: AUTH's user name is a tenant's name, the password an API
  key of that tenant allowed to send. Failures are throttled like sign-ins (per tenant name
  and client address). API keys are high-entropy tokens stored as SHA-256 (no password
  hash to compute), so a check is a couple of indexed reads.
- ``split_option_headers`` / ``options_from_headers``: ``X-Mailgate-*`` headers choose the
  configuration and options, and ``X-Mailgate-Metadata-<key>`` headers carry the message's
  metadata; they are removed before the message is stored.
- ``SmtpSubmission.prepare``: one message of an authenticated session through the outbox's
  raw MIME path (the same validation, Bcc and header handling as ``message/rfc822`` on the
  API), addressed to the envelope's recipients. Reads only: the caller stores the result by
  group commit and answers ``250`` after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import decode_header, make_header

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from mailgate.domain.access import Perm, Principal
from mailgate.domain.clock import Clock
from mailgate.domain.errors import (
    FieldError,
    Forbidden,
    NotFound,
    Unauthenticated,
    ValidationFailed,
)
from mailgate.domain.messages import Priority
from mailgate.domain.metadata import metadata_errors
from mailgate.services.email_servers import EmailServers
from mailgate.services.identity import API_KEY_PREFIX, Identity
from mailgate.services.outbox import Owner, Prepared, SubmitOptions, Submitter, lookup
from mailgate.services.tenants import tenant_id_for

OPTION_HEADER_PREFIX = "x-mailgate-"
SERVER_HEADER = "X-Mailgate-Server"
HOLD_HEADER = "X-Mailgate-Hold"
PRIORITY_HEADER = "X-Mailgate-Priority"
METADATA_HEADER_PREFIX = "X-Mailgate-Metadata-"
_KNOWN = {h.lower(): h for h in (SERVER_HEADER, HOLD_HEADER, PRIORITY_HEADER)}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


class UnknownServer(NotFound):
    """The tenant has no e-mail server of that name (or no default one)."""


@dataclass(frozen=True)
class SmtpLogin:
    """An authenticated SMTP session: the tenant and the API key it signed in with."""

    tenant: str
    tenant_id: int
    api_key_id: str
    key_name: str
    api_key: str = field(repr=False)
    """Kept to check the key again for every message (a revoked key stops at once)."""


@dataclass(frozen=True)
class MessageOptions:
    """What the ``X-Mailgate-*`` headers of a message chose."""

    server: str | None = None
    hold: bool = False
    priority: Priority = Priority.NORMAL
    metadata: dict[str, str] | None = None
    """From ``X-Mailgate-Metadata-<key>: <value>`` headers (README "Message metadata")."""


def split_option_headers(raw: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """The message without its ``X-Mailgate-*`` header fields, and those fields (name,
    unfolded value) in order. Only the header section is looked at; every other byte
    stays as the client sent it."""
    kept: list[bytes] = []
    found: list[tuple[str, bytes]] = []
    pos, end, dropping = 0, len(raw), False
    while pos < end:
        nl = raw.find(b"\n", pos)
        stop = end if nl < 0 else nl + 1
        line = raw[pos:stop]
        if line in (b"\r\n", b"\n"):
            break  # the blank line that ends the header section
        if line[:1] in (b" ", b"\t") and (kept or found):
            # A continuation line (RFC 5322 2.2.3) belongs to the field before it.
            if dropping:
                field_name, value = found[-1]
                found[-1] = (field_name, value + line)
            else:
                kept.append(line)
        else:
            name, colon, value = line.partition(b":")
            dropping = bool(colon) and name.strip().lower().startswith(b"x-mailgate-")
            if dropping:
                found.append((name.strip().decode("ascii", "replace"), value))
            else:
                kept.append(line)
        pos = stop
    if not found:
        return raw, []
    fields = [(name, " ".join(value.decode("utf-8", "replace").split())) for name, value in found]
    return b"".join(kept) + raw[pos:], fields


def options_from_headers(fields: Sequence[tuple[str, str]]) -> MessageOptions:
    """The options the headers choose; a bad value, an unknown or a repeated ``X-Mailgate-``
    header is the header's error (a typo must not silently send with the defaults)."""
    errors: list[FieldError] = []
    seen: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for name, value in fields:
        known = _KNOWN.get(name.lower())
        if name.lower().startswith(METADATA_HEADER_PREFIX.lower()):
            key = name[len(METADATA_HEADER_PREFIX) :]
            if key in metadata:
                errors.append(FieldError(name, "given more than once"))
            metadata[key] = _decoded(value)
        elif known is None:
            errors.append(
                FieldError(
                    name,
                    f"unknown header; mailgate reads {', '.join(_KNOWN.values())} and "
                    f"{METADATA_HEADER_PREFIX}<key>",
                )
            )
        elif known in seen:
            errors.append(FieldError(known, "given more than once"))
        else:
            seen[known] = value
    server = seen.get(SERVER_HEADER) or None
    hold = False
    if HOLD_HEADER in seen:
        word = seen[HOLD_HEADER].lower()
        if word in _TRUE:
            hold = True
        elif word not in _FALSE:
            errors.append(FieldError(HOLD_HEADER, "yes or no (true/false, 1/0) is expected"))
    priority = Priority.NORMAL
    if PRIORITY_HEADER in seen:
        try:
            priority = Priority(seen[PRIORITY_HEADER].lower())
        except ValueError:
            errors.append(FieldError(PRIORITY_HEADER, "high, normal or low is expected"))
    for error in metadata_errors(metadata, "metadata"):
        # Named as the client wrote them: the key's header, or all of them.
        key = error.field.removeprefix("metadata").removeprefix(".")
        errors.append(FieldError(METADATA_HEADER_PREFIX + (key or "*"), error.message))
    if errors:
        raise ValidationFailed(errors)
    return MessageOptions(server, hold, priority, metadata or None)


def _decoded(value: str) -> str:
    """A header value with RFC 2047 encoded words (``=?utf-8?q?...?=``) decoded."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value


class SmtpSubmission:
    def __init__(
        self, identity: Identity, servers: EmailServers, submitter: Submitter, clock: Clock
    ) -> None:
        self.identity = identity
        self.servers = servers
        self.submitter = submitter
        self.clock = clock

    def authenticate_reading(
        self, conn: Connection, tenant: str, api_key: str, client: str
    ) -> SmtpLogin | None:
        """``authenticate`` for the common case, from reads only (a read-only connection:
        on SQLite a transaction would take the write lock for nothing): a key that may send,
        no failures on record, ``last_used_at`` written less than a minute ago. ``None``:
        call ``authenticate``, which writes what there is to write (a failure, a cleared
        counter, ``last_used_at``) and raises what there is to raise."""
        if not api_key.startswith(API_KEY_PREFIX):
            return None
        if self.identity.has_sign_in_failures(conn, f"smtp:{tenant}", client):
            return None
        try:
            caller, touch = self.identity.authenticate_read_only(conn, api_key)
            tenant_id = tenant_id_for(conn, caller, tenant, Perm.MESSAGES_SEND)
        except (Unauthenticated, NotFound, Forbidden):
            return None
        if touch is not None:
            return None
        return _login(tenant, tenant_id, caller, api_key)

    def authenticate(self, db: Session, tenant: str, api_key: str, client: str) -> SmtpLogin:
        """The session of ``tenant`` signing in with ``api_key`` from ``client`` (its
        address). Raises ``Throttled``, or ``Unauthenticated`` (one answer for an unknown
        tenant, a wrong or revoked key, another tenant's key and a key that may not send).

        The caller commits even when this raises, so that a failure is counted."""
        name = f"smtp:{tenant}"
        self.identity.check_sign_in_throttle(db, name, client)
        try:
            if not api_key.startswith(API_KEY_PREFIX):
                raise Unauthenticated("not an API key")
            caller, touch = self.identity.authenticate_read_only(db, api_key)
            tenant_id = tenant_id_for(db.connection(), caller, tenant, Perm.MESSAGES_SEND)
        except (Unauthenticated, NotFound, Forbidden) as exc:
            self.identity.record_sign_in_failure(db, name, client)
            raise Unauthenticated("wrong tenant name or API key") from exc
        self.identity.clear_sign_in_failures(db, name, client)
        if touch is not None:
            self.identity.touch_api_keys(db, [touch])
        return _login(tenant, tenant_id, caller, api_key)

    def prepare(
        self, conn: Connection, login: SmtpLogin, raw: bytes, rcpt_to: Sequence[str]
    ) -> Prepared:
        """The rows of one message (reads only; ``store_many`` writes them). Raises
        ``ValidationFailed`` (headers, the outbox's checks), ``PayloadTooLarge``,
        ``UnknownServer``, ``Unauthenticated``/``Forbidden``/``NotFound`` (the key was
        revoked, or the tenant deleted, since AUTH)."""
        message, fields = split_option_headers(raw)
        chosen = options_from_headers(fields)
        found = lookup.lookup(conn, login.api_key, login.tenant, chosen.server, self.clock())
        if found is not None:
            caller, tenant_id, ref = found.caller, found.tenant_id, found.server
        else:
            # Not found in one go: the step-by-step reads say what is wrong.
            caller, _touch = self.identity.authenticate_read_only(conn, login.api_key)
            tenant_id = tenant_id_for(conn, caller, login.tenant, Perm.MESSAGES_SEND)
            try:
                ref = self.servers.ref(conn, tenant_id, chosen.server)
            except NotFound as exc:
                raise UnknownServer(exc.detail) from exc
        options = SubmitOptions(
            server=ref.name,
            hold=chosen.hold,
            priority=chosen.priority,
            metadata=chosen.metadata,
            source="smtp",
            rcpt_to=tuple(rcpt_to),
        )
        return self.submitter.prepare(
            conn, tenant_id, _owner(caller, tenant_id), message, options, server=ref
        )


def _login(tenant: str, tenant_id: int, caller: Principal, api_key: str) -> SmtpLogin:
    assert caller.api_key_id is not None
    return SmtpLogin(
        tenant, tenant_id, caller.api_key_id, caller.name.removeprefix("apikey:"), api_key
    )


def _owner(caller: Principal, tenant_id: int) -> Owner:
    """As the API's: callers without ``messages:read`` (web_service keys) see only their own."""
    return Owner(caller.name, caller.api_key_id, not caller.can(tenant_id, Perm.MESSAGES_READ))
