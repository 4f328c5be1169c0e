"""Prometheus metrics (prometheus-client): delivery counters, and queue numbers read from the
database at scrape time (so they are right with many workers).

Counters are those of this process; in ``mailgate serve`` those of the service: serve and
the worker processes it supervises count in files of one directory (prometheus-client's
multiprocess mode, ``enable_multiprocess``) and serve's ``/metrics`` adds them up."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.tables import Message, ServerDelivery, WebhookEvent
from mailgate.domain.clock import Clock
from mailgate.domain.events import DeliveryState
from mailgate.domain.messages import PENDING, Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def queue_numbers(db: Session, now: datetime) -> dict[str, Any]:
    """Messages by status, and how long the oldest ready message has waited for a worker."""
    by_status = {s.value: 0 for s in Status}
    for status, count in db.execute(select(Message.status, func.count()).group_by(Message.status)):
        by_status[status] = count
    oldest = db.scalar(
        select(func.min(Message.next_attempt_at)).where(
            Message.status.in_(
                [Status.QUEUED.value, Status.SCHEDULED.value, Status.DEFERRED.value]
            ),
            Message.next_attempt_at <= now,
        )
    )
    if oldest is not None and oldest.tzinfo is None:
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    return {
        "by_status": by_status,
        "pending": sum(by_status[s.value] for s in PENDING),
        "oldest_ready_s": max(0, int((now - oldest).total_seconds())) if oldest else 0,
    }


class _QueueCollector:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        self.sessions = sessions
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.sessions() as db:
            numbers = queue_numbers(db, self.clock())
        by_status = GaugeMetricFamily(
            "mailgate_messages", "Messages in the outbox by status", labels=["status"]
        )
        for status, count in numbers["by_status"].items():
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "mailgate_queue_depth",
            "Messages waiting for delivery (queued, scheduled, deferred, sending)",
            value=numbers["pending"],
        )
        yield GaugeMetricFamily(
            "mailgate_queue_oldest_ready_seconds",
            "How long the oldest ready message has waited for a worker",
            value=numbers["oldest_ready_s"],
        )
        yield from webhook_gauges(self.sessions, self.clock())
        with self.sessions() as db:
            paused = db.scalar(
                select(func.count())
                .select_from(ServerDelivery)
                .where(ServerDelivery.paused_until.is_not(None))
            )
        yield GaugeMetricFamily(
            "mailgate_servers_paused",
            "E-mail server configurations paused by their provider's quota or throttling "
            '(their mail waits; README "Provider limits, pauses and fairness")',
            value=paused or 0,
        )


def webhook_gauges(sessions: sessionmaker[Session], now: datetime) -> Iterator[GaugeMetricFamily]:
    """Webhook events by state, and how old the oldest one still waiting is (a receiver
    that has been failing for hours shows here before its events are given up)."""
    by_state = {s.value: 0 for s in DeliveryState}
    with sessions() as db:
        for state, count in db.execute(
            select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)
        ):
            by_state[state] = count
        oldest = db.scalar(
            select(func.min(WebhookEvent.created_at)).where(
                WebhookEvent.status == DeliveryState.PENDING.value
            )
        )
    family = GaugeMetricFamily(
        "mailgate_webhook_events",
        "Webhook events by state (pending, delivered, failed; kept 7 days)",
        labels=["state"],
    )
    for state, count in by_state.items():
        family.add_metric([state], count)
    yield family
    if oldest is not None and oldest.tzinfo is None:
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    yield GaugeMetricFamily(
        "mailgate_webhook_oldest_pending_seconds",
        "Age of the oldest webhook event not delivered yet (0: none waits)",
        value=max(0, int((now - oldest).total_seconds())) if oldest else 0,
    )


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(directory: Path) -> None:
    """Count the metrics of this process, and of the processes it starts afterwards (they
    inherit the environment), in files under ``directory``. Call before ``Metrics`` is
    created; prometheus-client otherwise reads the variable when it is first imported."""
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class Metrics:
    """One registry per container, so that several apps in one process do not collide.

    ``registry`` is what ``/metrics`` shows: this process's counters, or in multiprocess mode
    (``enable_multiprocess``) everyone's, summed from the files."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock) -> None:
        multiproc_dir = os.environ.get(MULTIPROC_ENV)
        # In multiprocess mode the counters write to files; registering them for exposition
        # as well would count this process twice.
        own = CollectorRegistry() if multiproc_dir else None
        self.registry = own or CollectorRegistry()
        self.latency = Histogram(
            "mailgate_delivery_latency_seconds",
            "From acceptance to delivery, for delivered messages",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400),
            registry=self.registry,
        )
        self.replies = Counter(
            "mailgate_smtp_replies",
            "Final SMTP replies of delivery attempts by code class (none: no reply)",
            ["code_class"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "mailgate_delivery_attempts",
            "Delivery attempts by the message's resulting status",
            ["result"],
            registry=self.registry,
        )
        self.possibly_delivered = Counter(
            "mailgate_delivery_possibly_delivered",
            "Attempts whose outcome is unknown while the server may have the message (no "
            "reply after the end of the message, or a worker stopped during the attempt); "
            "each is retried late and flagged in the attempt log",
            registry=self.registry,
        )
        self.write_failures = Counter(
            "mailgate_database_write_failures",
            "Database commits and writes that failed for a reason of the database's (disk "
            "full, read-only, I/O error, lock timeout, lost connection)",
            registry=self.registry,
        )
        self.token_requests = Counter(
            "mailgate_oauth2_token_requests",
            "OAuth2 token endpoint requests (code exchange, refresh, client credentials) by "
            "result: ok, refused (the provider said no), unavailable (network, 5xx)",
            ["result"],
            registry=self.registry,
        )
        self.smtp_submissions = Counter(
            "mailgate_smtp_submissions",
            "Messages given to the SMTP submission listener by outcome: queued (250), "
            "refused (5xx: the outbox or the options said no), not_stored (451)",
            ["result"],
            registry=self.registry,
        )
        self.smtp_auth = Counter(
            "mailgate_smtp_auth",
            "AUTH at the SMTP submission listener by result: ok, refused (535), throttled, "
            "unavailable (the database could not be asked)",
            ["result"],
            registry=self.registry,
        )
        if own is not None:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
        self.registry.register(_QueueCollector(sessions, clock))

    def observe_attempt(
        self,
        code: int | None,
        status: Status,
        created_at: datetime,
        now: datetime,
        *,
        possibly_delivered: bool = False,
    ) -> None:
        if possibly_delivered:
            self.possibly_delivered.inc()
        self.replies.labels(f"{code // 100}xx" if code else "none").inc()
        self.attempts.labels(status.value).inc()
        if status is Status.SENT:
            self.latency.observe(max(0.0, (now - created_at).total_seconds()))

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
