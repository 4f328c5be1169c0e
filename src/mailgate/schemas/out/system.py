"""Installation-wide answers: health, system settings, password reset, the audit log and the
certificate inspector."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mailgate.schemas.out.base import OutModel, Timestamp


class QueueOut(OutModel):
    queued: int = Field(description="waiting for delivery: queued, scheduled, deferred, sending")
    oldest_s: int = Field(description="how long the oldest due message has waited for a worker")
    ready: int
    scheduled: int
    deferred: int
    sending: int
    held: int


class WritePathOut(OutModel):
    last_commit: Literal["ok", "failed", "none"] = Field(
        description="How this process's last write to the database ended (a heartbeat is "
        "written to find out when it wrote nothing for 10 s); none: not known yet"
    )
    last_commit_age_s: float | None = Field(description="seconds since that write")
    last_ok_age_s: float | None = Field(description="seconds since the last write that worked")
    error: str | None = Field(description="the database's reason while writes fail")
    failed_commits: int = Field(description="failed writes since this process started")
    free_bytes: int | None = Field(
        description="SQLite: free space in the data directory (503 below 16 MiB); "
        "null on PostgreSQL"
    )


class HealthOut(OutModel):
    status: Literal["ok", "error"]
    database: Literal["ok", "unavailable"]
    write: WritePathOut = Field(
        description="The write path: a submission fails while last_commit is failed"
    )
    queue: QueueOut | None = Field(description="null when the database is unavailable")


class OutboundPolicyOut(OutModel):
    deny_networks: list[str] = Field(
        description="networks no tenant may make mailgate connect to, checked on the "
        "resolved address at connect time; MAILGATE_OUTBOUND_DENY adds to them"
    )


class SystemSettingsOut(OutModel):
    allow_remote_clients: bool
    public_base_url: str
    outbound_policy: OutboundPolicyOut


class ResetRequestedOut(OutModel):
    status: Literal["accepted"]
    detail: str


class ResetDoneOut(OutModel):
    status: Literal["ok"]
    username: str


class AuditEntryOut(OutModel):
    id: int
    at: Timestamp
    tenant: str | None = Field(description="the tenant changed (null: the installation)")
    actor: str = Field(description="a user's name, or apikey:<name>")
    action: str
    source: str | None = Field(description="the client address (null: the command line)")
    detail: dict[str, Any] | None


class AuditPage(OutModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: no more")


class CertificateOut(OutModel):
    subject: str
    issuer: str
    not_before: Timestamp
    not_after: Timestamp
    expired: bool
    self_signed: bool
    sha256: str = Field(description="fingerprint, colon-separated hex")


class CertificatesOut(OutModel):
    certificates: list[CertificateOut]
