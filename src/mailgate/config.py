"""Typed settings from the environment (``MAILGATE_*``), each with its default.

A ``.env`` file in the working directory may add more. Nothing here touches the disk or the
network: reading the key file or creating the data directory happens in ``bootstrap``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailgate.domain.outbound import parse_networks


class Settings(BaseSettings):
    """Every setting of a mailgate process. Field names map to ``MAILGATE_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="MAILGATE_", env_file=".env", extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8086, ge=1, le=65535)
    data_dir: Path = Path("./data")
    database_url: str | None = None
    """Default: ``sqlite:///<data_dir>/mailgate.db``."""
    secret_key: str | None = None
    """Comma-separated base64 keys; the first encrypts, all decrypt (rotation).
    Default: the key file ``<data_dir>/secret.key`` created on first start (mode 0600)."""
    admin_password: str | None = None
    public_base_url: str = "http://localhost:8086"
    workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    """Delivery worker processes that ``mailgate serve`` starts and supervises; ``auto``: one
    per CPU core beyond the first, at least 1 and at most 4; 0 for an API-only process."""
    log_level: str = "INFO"

    max_request_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    """Largest accepted HTTP request body."""
    header_timeout_s: float = Field(default=10, gt=0, le=600)
    """A request's headers must arrive within this many seconds of its first byte (of the
    connection, for its first request); a client that trickles them is disconnected."""
    body_timeout_s: float = Field(default=120, gt=0, le=3600)
    """A request's body must arrive completely within this many seconds (else ``408``)."""
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """Largest message accepted by the send API, whatever a configuration allows."""
    max_servers_per_tenant: int = Field(default=100, ge=1)
    """E-mail server configurations one tenant may have."""
    max_api_keys_per_tenant: int = Field(default=100, ge=1)
    """API keys one tenant may have."""
    max_remote_clients_per_tenant: int = Field(default=50, ge=1)
    """Remote clients (agents) one tenant may have."""
    max_webhooks_per_tenant: int = Field(default=20, ge=1)
    """Webhook endpoints one tenant may have."""
    session_hours: int = Field(default=12, ge=1)
    """Lifetime of a login token / browser session."""
    login_max_failures: int = Field(default=5, ge=1)
    """Failed logins per user and client address within ``login_window_s`` before 429."""
    login_window_s: int = Field(default=300, ge=1)
    login_max_failures_per_address: int = Field(default=20, ge=1)
    """Failed sign-ins from one client address, whatever the names, within
    ``login_window_s`` before 429 (password spraying)."""
    reset_max_per_address: int = Field(default=10, ge=1)
    """Password reset requests from one client address within ``login_window_s``."""
    password_hash_time_cost: int = Field(default=3, ge=1, le=20)
    """Argon2id passes over memory (RFC 9106); raise it on fast machines."""
    password_hash_memory_kib: int = Field(default=64 * 1024, ge=64, le=4 * 1024 * 1024)
    """Argon2id memory per password hash, in KiB."""

    smtp_listen: str = "127.0.0.1:2587"
    """SMTP submission listener (``host:port``, ``[v6]:port``) of ``mailgate serve`` and
    ``mailgate smtp``; empty: off. AUTH needs TLS except from loopback."""
    smtps_listen: str = ""
    """SMTP submission with implicit TLS (e.g. ``0.0.0.0:465``); needs the certificate."""
    smtp_tls_cert_file: Path | None = None
    """PEM certificate (chain) of the SMTP listener: with the key, STARTTLS is offered."""
    smtp_tls_key_file: Path | None = None
    smtp_max_connections: int = Field(default=100, ge=1)
    """SMTP connections open at once (both listeners of a process); more get ``421``."""
    smtp_max_connections_per_client: int = Field(default=50, ge=1)
    """SMTP connections open at once from one client address; more get ``421``."""
    smtp_command_timeout_s: float = Field(default=300, gt=0)
    """Deadline of each SMTP command: from one command to the next (RFC 5321 4.5.3.2.7)."""
    smtp_data_timeout_s: float = Field(default=600, gt=0)
    """Deadline of the message content after ``DATA`` (RFC 5321 4.5.3.2.6)."""

    retry_max_age_s: int = Field(default=2 * 24 * 3600, ge=60)
    """Temporary failures are retried until the message is this old, then it fails."""
    lease_s: int = Field(default=120, ge=5)
    """How long a worker owns a claimed message before another may take it."""
    sqlite_synchronous: Literal["full", "normal"] = "full"
    """SQLite's ``synchronous`` in WAL mode: ``full`` fsyncs every commit (a ``202`` survives
    a power loss); ``normal`` only at checkpoints (survives a crash of the process, not of
    the machine)."""
    shutdown_drain_s: float = Field(default=20.0, ge=0)
    """On SIGTERM a worker lets the attempts under way finish for at most this long, then
    stops them and hands them back (open attempts as possibly delivered)."""
    worker_dead_after_s: float = Field(default=15.0, ge=1)
    """A worker whose heartbeat (every fifth of this) stopped this long ago is dead: another
    worker takes over its messages at once instead of waiting for their leases."""
    retry_base_s: float = Field(default=60, gt=0)
    """First retry delay; it doubles with each attempt (with jitter) up to ``retry_cap_s``."""
    retry_cap_s: float = Field(default=3600, gt=0)
    possibly_delivered_retry_s: float = Field(default=3600, gt=0)
    """Wait before retrying a message the server may already have (no reply after the end of
    the message, or a worker stopped during the attempt)."""
    pause_quota_s: float = Field(default=3600, gt=0)
    """A configuration whose provider says its sending quota is used up (and gives no
    ``Retry-After``) pauses this long, then tries one message."""
    pause_backoff_s: float = Field(default=60, gt=0)
    """First pause of a configuration the provider throttles (without ``Retry-After``); it
    doubles with each consecutive pause, up to ``pause_quota_s``."""
    worker_batch: int = Field(default=200, ge=1, le=5000)
    """Messages a worker claims at a time (and keeps in flight at most)."""
    idle_session_s: float = Field(default=10.0, gt=0, le=300)
    """How long a worker's open session to a mail server waits for more mail before it says
    QUIT (and frees its ``max_connections`` slot); below the 5 minutes servers wait."""
    worker_poll_s: float = Field(default=5.0, gt=0)
    """Safety-net poll of an idle worker; new mail wakes it at once (in-process, or by
    PostgreSQL NOTIFY), so this only matters for mail submitted by another SQLite process."""

    remote_heartbeat_s: float = Field(default=15, gt=0, le=300)
    """Remote agents send a heartbeat this often; silence for three times as long ends the
    connection (and marks the client as not connected)."""
    remote_job_timeout_s: float = Field(default=300, gt=0)
    """How long a delivery or test handed to a remote agent may take before it is retried."""

    webhook_allow_private: bool = False
    """Whether webhooks may aim at loopback and private addresses (tests, an internal
    receiver); otherwise such a URL is refused and such an address never connected to."""
    webhook_lease_s: int = Field(default=60, ge=2)
    """How long a process owns a webhook event it is delivering before another may take it
    (longer than the 10 s deadline of a POST)."""
    oauth_microsoft_authority: str = "https://login.microsoftonline.com"
    oauth_google_authorize_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    oauth_google_token_url: str = "https://oauth2.googleapis.com/token"
    oauth_timeout_s: float = Field(default=30, gt=0, le=300)
    """Total deadline of one token endpoint request (connect to last byte): an endpoint
    that drips its answer is cut off then."""
    oauth_ca_bundle: Path | None = None
    """Extra CA file trusted for token endpoints and the mail APIs (tests, corporate
    proxies)."""
    graph_base_url: str = "https://graph.microsoft.com"
    """Microsoft Graph, for configurations with transport microsoft_graph."""
    gmail_api_base_url: str = "https://gmail.googleapis.com"
    """The Gmail API, for configurations with transport gmail_api."""
    outbound_deny: str = ""
    """Comma-separated networks no tenant may make mailgate connect to (SMTP, token
    endpoints, mail APIs, webhooks), in addition to the system setting
    ``outbound_policy.deny_networks`` (default there: link-local, 169.254.0.0/16 and
    fe80::/10). Checked on the resolved address at connect time."""

    @field_validator("outbound_deny")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value.split(","))  # a typo fails at start, not at the first connection
        return value

    @property
    def outbound_deny_networks(self) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.outbound_deny.split(",") if v.strip())

    @property
    def worker_processes(self) -> int:
        """``workers`` as a number (``auto`` resolved on this machine)."""
        if self.workers != "auto":
            return self.workers
        return auto_worker_processes(
            usable_cpus(), sqlite=self.effective_database_url.startswith("sqlite")
        )

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mailgate.db').resolve()}"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "secret.key"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_worker_processes(cpus: int, *, sqlite: bool = False) -> int:
    """``MAILGATE_WORKERS=auto``: the API process keeps one core, the workers get the rest.

    On SQLite one: every worker writes (started marks, results, limit reservations) under
    the database's one write lock, and a second worker process made delivery slower, not
    faster (bench/README.md: 341 against 1024 msg/s). On PostgreSQL one per core beyond the
    first; more than four mostly multiply connections (and memory), so more must be asked
    for."""
    if sqlite:
        return 1
    return max(1, min(cpus - 1, 4))
