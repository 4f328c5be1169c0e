"""SQLAlchemy tables. The same schema runs on SQLite and PostgreSQL.

Every tenant-owned row carries ``tenant_id``; repositories always filter on it.
Secret columns (``*_enc``) hold ``SecretBox`` ciphertexts bound to the row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            from datetime import UTC

            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(200))
    system_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Membership(Base):
    __tablename__ = "memberships"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(20))


class AuthSession(Base):
    """A login: the bearer token and the browser cookie carry the same secret."""

    __tablename__ = "auth_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(64))
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginThrottle(Base):
    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)


class EmailServer(Base):
    """A named SMTP configuration of a tenant; ``tenant_id`` NULL is the system server."""

    __tablename__ = "email_servers"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_email_servers_tenant_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    secrets_enc: Mapped[str | None] = mapped_column(Text)
    tokens_enc: Mapped[str | None] = mapped_column(Text)
    oauth2_state: Mapped[str | None] = mapped_column(String(32))
    access_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refresh_token_last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    oauth2_last_error: Mapped[str | None] = mapped_column(Text)
    oauth2_warning: Mapped[str | None] = mapped_column(Text)
    oauth2_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ServerLastTest(Base):
    """The last "Send test e-mail" (or dry run) of a configuration as saved: what the UI's
    status badge shows. Tests of unsaved settings are not recorded."""

    __tablename__ = "server_last_tests"
    server_id: Mapped[int] = mapped_column(
        ForeignKey("email_servers.id", ondelete="CASCADE"), primary_key=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    mode: Mapped[str] = mapped_column(String(16))
    step: Mapped[str | None] = mapped_column(String(32))
    """The step that failed (none when the test passed)."""
    detail: Mapped[str | None] = mapped_column(Text)


class ServerDelivery(Base):
    """How a configuration's delivery stands, shared by every worker process: a pause after a
    provider's quota or throttling answer (``domain/pauses.py``) and its probe. No row, or
    ``paused_until`` NULL: active."""

    __tablename__ = "server_delivery"
    server_id: Mapped[int] = mapped_column(
        ForeignKey("email_servers.id", ondelete="CASCADE"), primary_key=True
    )
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Nothing of this configuration is claimed before; after it, one probe message."""
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pause_kind: Mapped[str | None] = mapped_column(String(16))
    pause_reason: Mapped[str | None] = mapped_column(Text)
    last_reply: Mapped[str | None] = mapped_column(Text)
    pauses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Consecutive pauses without a delivery in between (the backoff grows with them)."""
    probe_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """A probe message is out (claimed) until then; meanwhile nothing else is claimed."""
    probe_message_id: Mapped[str | None] = mapped_column(String(32))
    next_send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """``limits.messages_per_minute`` of every process together: the next free send slot
    (``adapters/db/limits.py``)."""


class ServerConnection(Base):
    """One of a configuration's ``limits.max_connections`` slots, leased to the worker whose
    session holds it open (renewed by its heartbeat, free again after ``expires_at``)."""

    __tablename__ = "server_connections"
    server_id: Mapped[int] = mapped_column(
        ForeignKey("email_servers.id", ondelete="CASCADE"), primary_key=True
    )
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ServerRecipientCount(Base):
    """Recipients a configuration sent to in one hour, for ``limits.recipients_per_day``."""

    __tablename__ = "server_recipient_counts"
    server_id: Mapped[int] = mapped_column(
        ForeignKey("email_servers.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    recipients: Mapped[int] = mapped_column(Integer, default=0)


class OAuth2Authorization(Base):
    """A pending authorization-code flow: single-use ``state`` with its PKCE verifier."""

    __tablename__ = "oauth2_authorizations"
    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    server_id: Mapped[int] = mapped_column(ForeignKey("email_servers.id", ondelete="CASCADE"))
    code_verifier_enc: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OAuth2Notice(Base):
    """A notice to a tenant admin that an e-mail server's OAuth2 authorization broke: written
    with the state change, sent through the system e-mail server, deleted once sent. Until
    then it is retried at ``next_try_at``, so an outage of the system server loses nothing."""

    __tablename__ = "oauth2_notices"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(
        ForeignKey("email_servers.id", ondelete="CASCADE"), index=True
    )
    recipient: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), default="oauth2", server_default="oauth2")
    """``oauth2`` (the authorization broke) or ``paused`` (the provider's quota or throttling
    paused the configuration, ``server_delivery``)."""


class Message(Base):
    """An accepted message and its queue state, written in one transaction."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_messages_idempotency"),
        Index("ix_messages_tenant_created", "tenant_id", "created_at"),
        Index("ix_messages_ready", "status", "priority", "next_attempt_at"),
        # The claim beside full lanes: configurations with ready mail, then each one's next.
        Index("ix_messages_server_ready", "status", "server_id", "priority", "next_attempt_at"),
        Index("ix_messages_tenant_id", "tenant_id", "id"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    server_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_servers.id", ondelete="SET NULL"), index=True
    )
    server_name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=1)
    mail_from: Mapped[str] = mapped_column(String(320))
    rcpt_to: Mapped[list[str]] = mapped_column(JSON)
    subject: Mapped[str | None] = mapped_column(Text)
    message_id_header: Mapped[str | None] = mapped_column(String(998))
    size_bytes: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str | None] = mapped_column(String(100))
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_by: Mapped[str | None] = mapped_column(String(100))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Set (in one write per batch) just before an attempt goes out, cleared when its
    outcome is recorded: a message found with it set and no worker alive to finish the
    attempt is possibly delivered."""
    last_error: Mapped[str | None] = mapped_column(Text)
    recipient_status: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    meta: Mapped[dict[str, str] | None] = mapped_column(JSON)
    """The message's ``metadata`` (the attribute name ``metadata`` is SQLAlchemy's)."""
    source: Mapped[str | None] = mapped_column(String(8))
    """How it came in: ``api`` (HTTP, the CLI) or ``smtp`` (the submission listener);
    NULL for messages stored before this was recorded (they came through the API)."""


class MessageContent(Base):
    """The MIME bytes, apart from the row the queue scans."""

    __tablename__ = "message_contents"
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class MessageAttempt(Base):
    __tablename__ = "message_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_response: Mapped[str | None] = mapped_column(Text)
    ms: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(100))
    recipients: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    possibly_delivered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The outcome is unknown and the server may have the message (see
    ``AttemptResult.possibly_delivered``): a later repeat may reach the recipients twice."""


class RemoteClient(Base):
    __tablename__ = "remote_clients"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_remote_clients_tenant_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    connected_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    agent_address: Mapped[str | None] = mapped_column(String(100))


class SystemSetting(Base):
    __tablename__ = "system_settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class PasswordReset(Base):
    __tablename__ = "password_resets"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_tenant_at", "tenant_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(String(100))
    """The client address of the request that made the change (None: the command line)."""


class WebhookEndpoint(Base):
    """A tenant's webhook receiver: the events it wants, and its signing secret (encrypted,
    bound to the row: ``webhook:<id>``)."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str | None] = mapped_column(String(200))
    secret_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """The event outbox: one row per event and subscribed endpoint, written in the
    transaction of the change that caused the event, deleted never (``status`` ends
    ``delivered`` or ``failed``). ``next_attempt_at`` is also the lease's end while a
    dispatcher holds the row (as for messages); ``seq`` orders a message's events."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_due", "status", "next_attempt_at"),
        Index("ix_webhook_events_order", "endpoint_id", "message_id", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_by: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookAttempt(Base):
    """One POST of an event to an endpoint: the deliveries log."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_endpoint", "endpoint_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_row_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class Process(Base):
    """A running mailgate process that works the database: a delivery worker or an API
    process, with its heartbeat. A worker whose heartbeat stopped is dead: other workers
    take over its leases at once instead of waiting for them to run out."""

    __tablename__ = "processes"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    """The worker id (``host:pid:n``) that ``messages.locked_by`` names."""
    kind: Mapped[str] = mapped_column(String(16))
    """``worker`` | ``api``"""
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class (typed as ``Table``, for Core statements)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table
