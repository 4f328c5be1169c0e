"""The one place that builds real things: engine, secret box, services.

Tests build the same ``Container`` with their own settings (a temporary data directory, a
PostgreSQL database, a fixed clock), so the wiring they test is the wiring that runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from argon2 import PasswordHasher
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db import notify
from mailgate.adapters.db.batch_writer import BatchWriter
from mailgate.adapters.db.engine import (
    KeptReads,
    durable,
    make_engine,
    make_session_factory,
    read_only,
)
from mailgate.adapters.db.health import WriteHealth
from mailgate.adapters.http_api.gmail_api import GmailApi
from mailgate.adapters.http_api.graph import GraphApi
from mailgate.adapters.http_api.transport import ApiTransport, MailApi
from mailgate.adapters.metrics import Metrics
from mailgate.adapters.oauth2 import OAuth2Http
from mailgate.adapters.outbound import PolicySource
from mailgate.adapters.passphrase import ScryptEnvelope
from mailgate.adapters.remote.delivery import RemoteTransport
from mailgate.adapters.remote.hub import RemoteHub
from mailgate.adapters.secrets import SecretBox, load_or_create_key_file
from mailgate.adapters.smtp.transport import SmtpTransport
from mailgate.adapters.webhooks import HttpWebhookSender, new_secret
from mailgate.config import Settings
from mailgate.domain.addresses import without_private
from mailgate.domain.clock import Clock, utcnow
from mailgate.domain.oauth2_providers import ProviderSettings
from mailgate.domain.outbound import OutboundPolicy
from mailgate.ports import Prober, SystemMailer, Transport, WebhookSender
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.delivery.transports import TransportRouter
from mailgate.services.email_servers import EmailServers
from mailgate.services.events import WebhookDispatcher, Webhooks
from mailgate.services.identity import Identity
from mailgate.services.installation import Installation, Seeded, say
from mailgate.services.oauth2 import OAuth2
from mailgate.services.oauth2.alerts import OAuth2Alerts
from mailgate.services.oauth2.authorization import OAuth2AuthorizationFlow
from mailgate.services.oauth2.keeper import OAuth2Keeper
from mailgate.services.oauth2.tokens import OAuth2TokenProvider, OAuth2Tokens, token_providers
from mailgate.services.outbound import OutboundPolicySource
from mailgate.services.outbox import Outbox, Prepared, store_many
from mailgate.services.remote_clients import RemoteClients
from mailgate.services.submission import SmtpSubmission
from mailgate.services.system_mailer import TransportSystemMailer
from mailgate.services.transfer import Transfer

log = logging.getLogger("mailgate")


@dataclass
class Container:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    box: SecretBox
    clock: Clock
    identity: Identity
    servers: EmailServers
    remote_clients: RemoteClients
    oauth2: OAuth2
    transfer: Transfer
    outbox: Outbox
    wakeup: notify.Wakeup
    metrics: Metrics
    transports: TransportRouter
    """Every way this process can deliver (SMTP, Graph, Gmail API, remote agents); tests may
    wrap it."""
    read_engine: Engine
    """The engine for work that only reads (on SQLite it does not wait for the write lock)."""
    submission_reads: KeptReads
    """``read_engine``'s connections for the submission's reads on the event loop."""
    submissions: BatchWriter[Prepared]
    """Group commit of submissions without an idempotency key."""
    smtp_submission: SmtpSubmission
    """What the SMTP submission listener asks: AUTH by API key, a message's rows."""
    prober: Prober
    """What the server test drives: the router, which picks the configuration's transport."""
    hub: RemoteHub
    """The remote agents connected to this process."""
    system_mailer: SystemMailer
    """Mail through the system e-mail server: OAuth2 alerts, password reset links."""
    installation: Installation
    """First start and schema upgrades."""
    outbound_policy: OutboundPolicySource
    """Where tenants may make mailgate connect (SMTP, token endpoints, mail APIs,
    webhooks): call it for the current ``domain.outbound.OutboundPolicy``."""
    webhooks: Webhooks
    """Tenants' webhook endpoints."""
    webhook_sender: WebhookSender
    """POSTs signed events (the outbound address policy of webhooks at connect time)."""
    write_health: WriteHealth
    """The last commit's outcome and age in this process (/healthz, the 503 answers)."""
    durable_sessions: sessionmaker[Session]
    """Sessions whose commits survive a power loss on SQLite (submissions with an
    idempotency key; the group commit has its own connection)."""

    def webhook_dispatcher(self, worker_id: str) -> WebhookDispatcher:
        """A dispatcher of the event outbox for this process (``mailgate worker``)."""
        return WebhookDispatcher(
            self.sessions,
            self.webhook_sender,
            self.box,
            self.clock,
            worker_id,
            lease=timedelta(seconds=self.settings.webhook_lease_s),
        )

    def token_provider_for(self, server: ResolvedServer) -> OAuth2TokenProvider | None:
        """The XOAUTH2 token provider of an OAuth2 configuration (for the SMTP transport);
        ``None`` for other authentication methods. Call the provider outside any open
        database transaction: a refresh takes the configuration's row lock."""
        if server.config.authentication.method != "oauth2":
            return None
        # With the alerts: a refusal's notices go out as soon as the transport meets it.
        return OAuth2TokenProvider(self.oauth2.tokens, server.id, alerts=self.oauth2.alerts)

    @contextmanager
    def session(self, *, durable: bool = False) -> Iterator[Session]:
        """A unit of work: commit on success, roll back on any error. ``durable``: the
        commit survives a power loss on SQLite too (``adapters.db.engine.durable``)."""
        with (self.durable_sessions if durable else self.sessions)() as db:
            try:
                yield db
                db.commit()
            except BaseException:
                db.rollback()
                raise


def build(
    settings: Settings, clock: Clock = utcnow, *, system_mailer: SystemMailer | None = None
) -> Container:
    """``system_mailer``: instead of mail through the system e-mail server (tests)."""
    # Only the service account needs the data directory (database, key file).
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_spec = settings.secret_key or load_or_create_key_file(settings.key_file)
    engine = make_engine(settings.effective_database_url)
    # The submissions' commits (the 202, the SMTP 250) survive a power loss on SQLite too,
    # unless the operator traded that for speed (README "What a 202 guarantees").
    submit_engine = durable(engine) if settings.sqlite_synchronous == "full" else engine
    sync_wal = settings.sqlite_synchronous == "full" and engine.dialect.name == "sqlite"
    box = SecretBox.from_spec(key_spec)
    sessions = make_session_factory(engine)
    durable_sessions = make_session_factory(submit_engine)
    read_engine = read_only(engine)
    outbound_policy = OutboundPolicySource(read_engine, settings.outbound_deny_networks)
    servers = EmailServers(
        box, clock, settings.public_base_url, max_per_tenant=settings.max_servers_per_tenant
    )
    metrics = Metrics(sessions, clock)
    write_health = WriteHealth(on_failure=metrics.write_failures.inc)
    write_health.install(engine)
    hub = RemoteHub()

    async def token_rejected(server: ResolvedServer, detail: str) -> None:
        # A mail API refused a fresh token: re-authorization, with the admins' notices.
        if await asyncio.to_thread(oauth2.tokens.token_rejected, server.id, detail):
            await asyncio.to_thread(oauth2.alerts.send_due)

    def api(kind: MailApi) -> ApiTransport:
        return ApiTransport(
            kind,
            ca_bundle=settings.oauth_ca_bundle,
            clock=clock,
            on_token_rejected=token_rejected,
            policy=outbound_policy,
        )

    transports = TransportRouter(
        {
            "smtp": SmtpTransport(outbound_policy),
            "microsoft_graph": api(GraphApi(settings.graph_base_url)),
            "gmail_api": api(GmailApi(settings.gmail_api_base_url)),
        },
        remote=RemoteTransport(hub, settings.remote_job_timeout_s),
    )
    oauth2, system_mailer = _oauth2(
        settings,
        sessions,
        servers,
        box,
        clock,
        metrics,
        transports,
        system_mailer,
        outbound_policy,
    )
    wakeup = notify.Wakeup()
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        wakeup.local = notify.LocalSignal.for_database(Path(str(engine.url.database)))
    notify.install(sessions, wakeup)
    webhook_policy = webhook_policy_of(outbound_policy, settings.webhook_allow_private)
    identity = Identity(
        clock,
        settings.session_hours,
        settings.login_max_failures,
        settings.login_window_s,
        PasswordHasher(
            time_cost=settings.password_hash_time_cost,
            memory_cost=settings.password_hash_memory_kib,
        ),
        max_api_keys=settings.max_api_keys_per_tenant,
        max_failures_per_address=settings.login_max_failures_per_address,
        max_resets_per_address=settings.reset_max_per_address,
    )
    outbox = Outbox(
        servers,
        clock,
        settings.max_message_bytes,
        timedelta(seconds=settings.retry_max_age_s),
    )
    return Container(
        settings=settings,
        engine=engine,
        sessions=sessions,
        box=box,
        clock=clock,
        identity=identity,
        servers=servers,
        remote_clients=RemoteClients(clock, max_per_tenant=settings.max_remote_clients_per_tenant),
        oauth2=oauth2,
        transfer=Transfer(servers, clock, ScryptEnvelope()),
        outbox=outbox,
        wakeup=wakeup,
        metrics=metrics,
        transports=transports,
        prober=transports,
        hub=hub,
        read_engine=read_engine,
        submission_reads=KeptReads(read_engine),
        submissions=BatchWriter(
            engine,
            store_many,
            wakeup.notify,
            # SQLite: the fsync of the WAL that synchronous=FULL would do at each commit,
            # in a thread of its own, before the 202s of that commit; the event loop goes
            # on meanwhile (README "What a 202 guarantees"). Requests that come while an
            # fsync runs wait for the next one anyway, so the commit does not linger for
            # more: bench row (c), 7 interleaved pairs, median 1893 msg/s with a 1 ms
            # linger and 2016 without, CPU per message no higher.
            linger_s=0.0 if sync_wal else 0.001,
            sync_wal=sync_wal,
        ),
        smtp_submission=SmtpSubmission(identity, servers, outbox.submitter, clock),
        system_mailer=system_mailer,
        write_health=write_health,
        durable_sessions=durable_sessions,
        installation=Installation(
            engine,
            sessions,
            identity,
            clock,
            admin_password=settings.admin_password,
            public_base_url=settings.public_base_url,
        ),
        outbound_policy=outbound_policy,
        webhooks=Webhooks(
            box,
            clock,
            webhook_policy,
            new_secret,
            refuse_local_names=not settings.webhook_allow_private,
            max_per_tenant=settings.max_webhooks_per_tenant,
        ),
        webhook_sender=HttpWebhookSender(webhook_policy),
    )


def webhook_policy_of(
    installation: Callable[[], OutboundPolicy], allow_private: bool
) -> Callable[[], OutboundPolicy]:
    """The outbound policy of webhooks: the installation's, and no loopback or private
    destination unless ``MAILGATE_WEBHOOK_ALLOW_PRIVATE``."""
    if allow_private:
        return installation
    return lambda: without_private(installation())


def _oauth2(
    settings: Settings,
    sessions: sessionmaker[Session],
    servers: EmailServers,
    box: SecretBox,
    clock: Clock,
    metrics: Metrics,
    transport: Transport,
    system_mailer: SystemMailer | None,
    outbound_policy: PolicySource,
) -> tuple[OAuth2, SystemMailer]:
    """The OAuth2 services and the system mailer, in dependency order. The system mailer needs
    tokens (of the system server); the alerts need the mailer; the token service records
    incidents and never sends mail itself, so nothing here is circular."""
    endpoint = OAuth2Http(settings.oauth_ca_bundle, settings.oauth_timeout_s, outbound_policy)
    providers = ProviderSettings(
        microsoft_authority=settings.oauth_microsoft_authority,
        google_authorize_url=settings.oauth_google_authorize_url,
        google_token_url=settings.oauth_google_token_url,
    )

    def count(result: str) -> None:
        metrics.token_requests.labels(result).inc()

    tokens = OAuth2Tokens(
        sessions=sessions,
        servers=servers,
        endpoint=endpoint,
        providers=providers,
        clock=clock,
        on_token_request=count,
        request_deadline_s=settings.oauth_timeout_s,
    )
    if system_mailer is None:
        # Its own token providers carry no alerts: the system server has no tenant admins.
        system_mailer = TransportSystemMailer(
            sessions, servers, token_providers(tokens), transport, clock
        )
    alerts = OAuth2Alerts(
        sessions=sessions,
        mailer=system_mailer,
        clock=clock,
        public_base_url=settings.public_base_url,
    )
    oauth2 = OAuth2(
        authorization=OAuth2AuthorizationFlow(
            servers=servers,
            cipher=box,
            endpoint=endpoint,
            providers=providers,
            clock=clock,
            on_token_request=count,
        ),
        tokens=tokens,
        alerts=alerts,
        keeper=OAuth2Keeper(sessions=sessions, tokens=tokens, alerts=alerts, clock=clock),
    )
    return oauth2, system_mailer


def first_start(c: Container, echo: Callable[[str], None] = say) -> Seeded | None:
    """Migrate, then on a database without users create ``admin`` and the tenant ``home``
    (a generated password is echoed once)."""
    return c.installation.first_start(echo)
