"""The small contracts the services need from the outside world (the ports).

Services and entrypoints depend on these Protocols; adapters implement them; ``bootstrap``
plugs one into the other. Nothing here does I/O. Value types that cross a port live in
``domain/`` (outcomes, steps, agent identities) or, for a configuration and its decrypted
secrets, in ``schemas/email_server.py`` (``ResolvedServer``: the validated settings are a
pydantic model, and ``domain/`` stays standard-library only).

::

    services ──uses──> ports <──implements── adapters
                         │
                       domain, schemas (value types)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from mailgate.domain.delivery import Claimed, Heartbeat, Journaled, Recorded, SendSlot
from mailgate.domain.events import WebhookResponse
from mailgate.domain.messages import AttemptResult, Status
from mailgate.domain.oauth2 import TokenSet
from mailgate.domain.oauth2_providers import Endpoints
from mailgate.domain.remote import AgentIdentity
from mailgate.domain.transport import Failure, Step
from mailgate.schemas.email_server import ResolvedServer


class TokenProvider(Protocol):
    """The OAuth2 access token of one configuration (XOAUTH2, Graph, Gmail API).

    ``force_refresh`` asks for a new token after the peer refused the current one. Call it
    outside any database transaction: a refresh is an HTTP call and takes the row's lock.
    """

    async def access_token(self, *, force_refresh: bool = False) -> str: ...


class DeliverySession(Protocol):
    """One open channel to a configuration's mail system, sending messages one by one.

    ``send`` never raises for a delivery problem: it classifies the outcome once
    (delivered, temporary, permanent, with the deciding reply) and the delivery service alone
    decides what happens next. ``usable`` turns false when the channel can take no more
    messages (the peer hung up, a protocol error); the caller then opens a new one.
    """

    @property
    def usable(self) -> bool: ...

    async def send(self, mail_from: str, rcpt_to: list[str], raw: bytes) -> AttemptResult: ...

    async def close(self) -> None: ...


class SessionFailed(Exception):
    """Opening a session failed; ``result`` says how (temporary or permanent). Every message
    waiting for the same configuration would fail the same way."""

    def __init__(self, result: AttemptResult) -> None:
        super().__init__(result.text)
        self.result = result


class Transport(Protocol):
    """A way to deliver a configuration's mail: SMTP, an HTTP mail API, a remote agent."""

    async def open(
        self, server: ResolvedServer, tokens: TokenProvider | None
    ) -> DeliverySession: ...


SessionOpener = Callable[[ResolvedServer, TokenProvider | None], Awaitable[DeliverySession]]
"""``Transport.open`` as a plain function (tests hand the worker one of their own)."""


class ProbeFailed(Exception):
    """A probe could not go on: the connection or session failed (``failure`` says at which
    step, of what kind, with the peer's reply). The step is already reported."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


class Probe(Protocol):
    """One diagnosis run ("Send test e-mail") over a transport, step by step.

    Every step goes to the ``on_step`` given to ``Prober.probe`` as it completes, passed or
    failed; ``transcript`` is the exchange so far with every secret redacted (the SMTP
    dialogue, or an HTTP API's requests and answers). The caller bounds the whole run by
    ``budget_s`` and reads ``transcript`` and ``warnings`` afterwards, also after a timeout.
    """

    @property
    def step_names(self) -> tuple[str, ...]:
        """The steps this probe reports, in order (a timeout is blamed on the first one not
        reported): ``resolve`` ... ``data`` for SMTP, ``token`` and ``send`` for an API."""
        ...

    @property
    def budget_s(self) -> float:
        """The longest the whole run may take under the configuration's timeouts."""
        ...

    @property
    def transcript(self) -> list[str]: ...

    @property
    def warnings(self) -> list[str]:
        """What the admin should know about a session that opened (e.g. no encryption)."""
        ...

    def note(self, text: str) -> None:
        """Add a line of the caller's to the transcript (how the OAuth2 token was got)."""

    async def open(self) -> None:
        """Connect and authenticate (for an API: get the token); raises ``ProbeFailed``."""

    async def send(
        self, mail_from: str, rcpt_to: str, raw: bytes, *, dry_run: bool
    ) -> Failure | None:
        """Send the test message; ``dry_run`` goes as far as the transport can without
        sending (SMTP: RCPT TO, then RSET; an API: nothing after ``open``). ``None`` when
        accepted, the ``Failure`` when the peer refused; raises ``ProbeFailed`` when the
        connection broke before an answer."""

    async def close(self) -> None: ...


class Prober(Protocol):
    """What the diagnosis needs from a transport: a probe of one configuration."""

    def probe(
        self,
        server: ResolvedServer,
        tokens: TokenProvider | None,
        on_step: Callable[[Step], None],
    ) -> Probe: ...


class SystemMailer(Protocol):
    """Mail from the installation itself (password reset links, OAuth2 and pause notices),
    through the system e-mail server. Raises when it cannot be sent; never blocks an event
    loop (callers run it in a thread)."""

    def send_system_mail(self, to: str, subject: str, text: str) -> None: ...


class AgentDirectory(Protocol):
    """Which remote agents are connected to this process (the WebSocket hub).

    ``accepting`` is true in a process that serves the agents' WebSocket endpoint; a
    standalone worker's directory never has an agent."""

    @property
    def accepting(self) -> bool: ...

    def connected(self) -> list[AgentIdentity]: ...

    def is_connected(self, tenant_id: int, client: str) -> bool: ...


class DeliveryQueue(Protocol):
    """The outbox as a queue of leased messages (``adapters/db/queue.py``).

    Blocking calls: the delivery service runs them in a thread, never inside its event loop.
    Every method acts only on rows the worker still holds (``locked_by``), so a worker whose
    lease expired cannot overwrite the state another worker wrote since.
    """

    def claim(
        self,
        worker_id: str,
        limit: int,
        skip_servers: Collection[int] = (),
        only_servers: Collection[int] | None = None,
        per_server: int | None = None,
        held: Mapping[int, int] | None = None,
    ) -> list[Claimed]: ...

    def record(
        self, worker_id: str, items: Sequence[tuple[Claimed, AttemptResult]]
    ) -> list[Recorded]: ...

    def journal(
        self,
        worker_id: str,
        start: Sequence[str],
        items: Sequence[tuple[Claimed, AttemptResult]],
    ) -> Journaled:
        """In one transaction: mark the attempts of ``start`` started (before they go out,
        so that a crash leaves them visible as possibly delivered) and record ``items``."""
        ...

    def postpone(
        self, worker_id: str, items: Sequence[tuple[Claimed, datetime, str | None]]
    ) -> None: ...

    def extend(self, worker_id: str, ids: Sequence[str]) -> None: ...

    def heartbeat(self, worker_id: str, dead_after: timedelta) -> Heartbeat:
        """Say this worker is alive; take over the messages of workers that are not."""
        ...

    def leave(self, worker_id: str) -> None: ...

    def abandon(self, worker_id: str) -> int:
        """Give back all a stopping worker still holds: open attempts as possibly delivered,
        the rest ready again."""
        ...

    def paused_servers(self) -> list[int]:
        """Configurations paused right now (by any process) after a quota or throttling
        answer; their mail is not claimed until the pause ends."""
        ...

    def next_due(
        self, skip_servers: Collection[int] = (), only_servers: Collection[int] | None = None
    ) -> datetime | None: ...


class DeliveryLimits(Protocol):
    """A configuration's limits held across every worker process (``adapters/db/limits.py``;
    ``services/delivery/policy.LocalLimits`` in memory, for one process).

    Blocking calls in short transactions; nothing holds a transaction while mail is sent.
    """

    def reserve(
        self,
        server_id: int,
        spacing_s: float,
        per_day: int | None,
        recipients: Sequence[int],
        max_wait_s: float,
    ) -> list[SendSlot]:
        """Send slots for messages of one configuration, in order: evenly spaced by
        ``spacing_s`` (``messages_per_minute``) after every slot reserved before, and within
        ``per_day`` recipients in any 24 hours. A slot further away than ``max_wait_s`` is
        not reserved (``keep`` False)."""
        ...

    def acquire_connection(self, server_id: int, limit: int, holder: str) -> int | None:
        """One of the configuration's ``limit`` connection slots for ``holder``, or ``None``
        when all are held (leased: renewed while held, free again if the holder dies)."""
        ...

    def renew_connections(self, holder: str, held: Collection[tuple[int, int]]) -> None: ...

    def release_connection(self, server_id: int, slot: int, holder: str) -> None: ...


class DeliveryObserver(Protocol):
    """Counts what delivery did (the Prometheus metrics)."""

    def observe_attempt(
        self,
        code: int | None,
        status: Status,
        created_at: datetime,
        now: datetime,
        *,
        possibly_delivered: bool = False,
    ) -> None: ...


class TokenEndpoint(Protocol):
    """An OAuth2 provider's authorization and token endpoints (RFC 6749, PKCE per RFC 7636).

    Every token call answers a ``TokenSet`` (``expires_at`` counted from ``now``) or raises
    ``TokenRefused`` (the provider's ``error``) or ``EndpointUnreachable`` (network, TLS, 5xx,
    no token in the answer), both from ``domain.oauth2``. Calls are HTTP with a deadline:
    the refresh holds the configuration's row lock meanwhile, no other transaction.
    """

    def authorization_url(
        self,
        ep: Endpoints,
        *,
        client_id: str,
        redirect_uri: str,
        state: str,
        code_verifier: str,
    ) -> str: ...

    def exchange_code(
        self,
        ep: Endpoints,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        code: str,
        code_verifier: str,
        now: datetime,
    ) -> TokenSet: ...

    def refresh(
        self,
        ep: Endpoints,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        now: datetime,
    ) -> TokenSet:
        """A provider that does not rotate keeps the old refresh token in the answer."""
        ...

    def client_credentials(
        self, ep: Endpoints, *, client_id: str, client_secret: str, now: datetime
    ) -> TokenSet: ...


class SecretCipher(Protocol):
    """Encryption at rest of the secrets in the database (passwords, client secrets and keys,
    OAuth2 tokens, PKCE verifiers).

    ``context`` names the row a ciphertext belongs to (``email-server:<id>``): a ciphertext
    copied into another row does not decrypt. Several keys may be configured: the current one
    encrypts, all decrypt, ``rotate`` re-encrypts with the current one. Every failure to
    decrypt raises ``domain.errors.SecretKeyError``.
    """

    @property
    def current_key_id(self) -> str:
        """A short fingerprint of the key that encrypts (not the key)."""
        ...

    def encrypt(self, plaintext: bytes, context: str) -> str: ...

    def decrypt(self, token: str, context: str) -> bytes: ...

    def encrypt_json(self, value: dict[str, Any], context: str) -> str: ...

    def decrypt_json(self, token: str | None, context: str) -> dict[str, Any]:
        """``{}`` for no ciphertext."""
        ...

    def needs_rotation(self, token: str) -> bool: ...

    def rotate(self, token: str, context: str) -> str: ...


class PassphraseEnvelope(Protocol):
    """Seals the secrets of an export file under a passphrase (a memory-hard KDF, then an
    AEAD), bound to ``associated_data`` (the rest of the document): a wrong passphrase and an
    edit anywhere in the document fail alike, with ``domain.errors.EnvelopeError``. The
    envelope is plain JSON, so it sits inside the document."""

    def seal(self, passphrase: str, plaintext: bytes, associated_data: bytes) -> dict[str, Any]: ...

    def open(self, passphrase: str, envelope: Any, associated_data: bytes) -> bytes: ...


class WebhookSender(Protocol):
    """POSTs one signed webhook event (Standard Webhooks headers) within a total deadline,
    only to destinations the outbound policy allows (checked on the resolved address at
    connect time), never following a redirect. Never raises for a delivery problem: every
    failure is a ``WebhookResponse`` without a status code and with the reason."""

    async def send(
        self, url: str, secret: str, event_id: str, timestamp: int, body: bytes
    ) -> WebhookResponse: ...
