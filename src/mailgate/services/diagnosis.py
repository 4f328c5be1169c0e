"""Test and diagnose an e-mail server configuration (API.md "Test and diagnose").

The test runs the real transport step by step (resolve, connect, tls, ehlo, auth, mail_from,
rcpt_to, data) and reports every step, the redacted SMTP transcript, warnings and a hint.
It never raises for an SMTP or network problem: every failure is a step result. It never runs
longer than the configured timeouts allow (each step is bounded, and the whole test too).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any, Literal

from mailgate.adapters.smtp import (
    SmtpSession,
    Step,
    Transcript,
    TransportError,
    hint_for,
)
from mailgate.domain.clock import Clock
from mailgate.domain.errors import FieldError, MailgateError, ValidationFailed
from mailgate.domain.messages import Outcome
from mailgate.domain.oauth2_providers import oauth2_hint
from mailgate.ports import TokenProvider
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets
from mailgate.services.email_servers import EmailServers
from mailgate.services.oauth2.tokens import OAuth2TokenProvider

log = logging.getLogger("mailgate.server_test")

Mode = Literal["send", "dry_run"]
TokenProviderFor = Callable[[ResolvedServer], TokenProvider | None]


class StepLog(list[Step]):
    """A list of steps that also reports each one as it happens (CLI progress)."""

    def __init__(self, on_step: Callable[[Step], None] | None = None) -> None:
        super().__init__()
        self.on_step = on_step

    def append(self, step: Step) -> None:
        super().append(step)
        if self.on_step is not None:
            self.on_step(step)


@dataclass
class Diagnosis:
    ok: bool
    mode: Mode
    steps: list[Step]
    transcript: list[str]
    hint: str | None
    warnings: list[str] = field(default_factory=list)
    ms: int = 0
    message_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "steps": [s.as_dict() for s in self.steps],
            "transcript": self.transcript,
            "hint": self.hint,
            "warnings": self.warnings,
            "ms": self.ms,
            "message_id": self.message_id,
        }


def token_provider(container: object, server: ResolvedServer) -> TokenProvider | None:
    """The OAuth2 token provider for ``server`` from the container's ``token_provider_for``
    hook (wired by the OAuth2 code); ``None`` for other methods or when it is not wired."""
    if server.config.authentication.method != "oauth2":
        return None
    factory = getattr(container, "token_provider_for", None)
    if factory is None or not server.id:
        return None  # an unsaved new configuration has no tokens yet
    try:
        provider: TokenProvider | None = factory(server)
    except MailgateError:
        return None
    return provider


def sender_of(cfg: EmailServerIn) -> tuple[str | None, str | None]:
    """(header From address, envelope MAIL FROM) from the message defaults."""
    defaults = cfg.message_defaults
    username = cfg.authentication.username
    from_address = defaults.from_address or (username if username and "@" in username else None)
    return from_address, defaults.envelope_from or from_address


def build_test_message(
    cfg: EmailServerIn, label: str, to: str, clock: Clock
) -> tuple[str, bytes] | None:
    """The test e-mail (Message-ID, bytes) built from the message defaults; None without a
    sender."""
    from_address, _envelope = sender_of(cfg)
    if from_address is None:
        return None
    defaults = cfg.message_defaults
    msg = EmailMessage()
    for name, value in defaults.headers.items():
        msg[name] = value
    msg["From"] = formataddr((defaults.from_name or "", from_address))
    msg["To"] = to
    if defaults.reply_to:
        msg["Reply-To"] = defaults.reply_to
    msg["Subject"] = f"mailgate test e-mail: {label}"
    msg["Date"] = format_datetime(clock())
    domain = from_address.rpartition("@")[2]
    message_id = f"<mailgate-test.{uuid.uuid4().hex}@{domain}>"  # short: no header folding
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to a test
    security = "implicit TLS" if cfg.protocol == "smtps" else f"STARTTLS {cfg.starttls}"
    msg.set_content(
        "This is a test e-mail from mailgate.\n\n"
        f"It was sent through the e-mail server configuration {label} "
        f"({cfg.host}:{cfg.port}, {security}, authentication "
        f"{cfg.authentication.method}).\n\n"
        "If you can read this, the configuration can send mail. No reply is needed.\n"
    )
    return message_id, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _total_budget(cfg: EmailServerIn) -> float:
    # resolve + connect (+ implicit TLS) bounded by connect_s; the rest by command_s each,
    # at most ~10 exchanges (EHLO, STARTTLS, EHLO, AUTH x2 and a token, MAIL, RCPT, DATA, QUIT).
    return 2 * cfg.timeouts.connect_s + 10 * cfg.timeouts.command_s + 1


async def run_test(
    server: ResolvedServer,
    *,
    to: str,
    mode: Mode,
    label: str,
    clock: Clock,
    token_provider: TokenProvider | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Diagnosis:
    """Run the diagnosis. Never raises for SMTP, TLS, DNS or network failures."""
    started = time.monotonic()
    cfg = server.config
    steps = StepLog(on_step)
    transcript = Transcript()
    if isinstance(token_provider, OAuth2TokenProvider):
        token_provider.note = transcript.note  # the token step shows in the transcript
    hint: str | None = None
    warnings: list[str] = []
    message_id: str | None = None
    ok = False
    session: SmtpSession | None = None
    try:
        async with asyncio.timeout(_total_budget(cfg)):
            session = await SmtpSession.open(
                server, token_provider=token_provider, transcript=transcript, steps=steps
            )
            warnings = session.warnings
            envelope_from = sender_of(cfg)[1]
            built = build_test_message(cfg, label, to, clock)
            if built is None or envelope_from is None:
                steps.append(
                    Step(
                        "mail_from",
                        False,
                        0,
                        "no sender: set message_defaults.from_address",
                    )
                )
                hint = "Set message_defaults.from_address: the test needs a sender address."
            else:
                message_id, raw = built
                result = await session.send(envelope_from, [to], raw, dry_run=mode == "dry_run")
                ok = result.outcome is Outcome.DELIVERED
                if not ok:
                    reply = result.recipients[to].reply if to in result.recipients else None
                    hint = hint_for(result.step, result.kind, reply or result.reply)
                if mode == "dry_run":
                    message_id = None
    except TransportError as exc:
        hint = oauth2_hint(cfg.authentication.model_dump(), exc.kind) or hint_for(
            exc.step, exc.kind, exc.reply
        )
        if session is not None:
            warnings = session.warnings
    except TimeoutError:
        done = {s.step for s in steps}
        pending = next((s for s in _STEP_ORDER if s not in done), "data")
        steps.append(Step(pending, False, 0, "the test took longer than its time budget"))
        hint = hint_for(pending, "timeout", None)
    except Exception as exc:  # a bug must not turn into a 500 or leak a secret
        # Type and place only: an exception text could carry a secret.
        where = "".join(traceback.format_tb(exc.__traceback__))
        log.error("server test failed unexpectedly: %s\n%s", type(exc).__name__, where)
        steps.append(Step("connect", False, 0, f"internal error ({type(exc).__name__})"))
    finally:
        if session is not None:
            try:
                async with asyncio.timeout(cfg.timeouts.command_s + 1):
                    await session.close()
            except (TimeoutError, OSError):
                pass
    return Diagnosis(
        ok=ok,
        mode=mode,
        steps=list(steps),
        transcript=transcript.lines,
        hint=hint,
        warnings=list(dict.fromkeys(warnings)),
        ms=int((time.monotonic() - started) * 1000),
        message_id=message_id,
    )


_STEP_ORDER = ("resolve", "connect", "tls", "ehlo", "auth", "mail_from", "rcpt_to", "data")


def resolve_for_test(
    servers: EmailServers,
    stored: ResolvedServer | None,
    unsaved: Any,
    *,
    system: bool,
) -> ResolvedServer:
    """The server to test: the stored one, or an unsaved ``config`` validated like a save.

    Stored secrets fill in what the unsaved config omits, but only while it points at the
    same host: a stored password is never sent to a different server.
    """
    if unsaved is None:
        if stored is None:
            raise ValidationFailed.one("config", "this server does not exist; send a config")
        return stored
    if not isinstance(unsaved, dict):
        raise ValidationFailed.one("config", "a JSON object (an e-mail server config) is expected")
    data = dict(unsaved)
    if system:
        data.pop("name", None)
    elif stored is not None:
        data.setdefault("name", stored.name)
    secrets = stored.secrets if stored is not None else ServerSecrets()
    same_host = stored is not None and str(data.get("host", "")).strip().lower() == (
        stored.config.host.lower()
    )
    usable = secrets if same_host else ServerSecrets()
    try:
        cfg = servers.parse(data, usable)
    except ValidationFailed as exc:
        errors = [FieldError(f"config.{e.field}", e.message) for e in exc.errors]
        if not same_host and stored is not None:
            errors = [
                FieldError(
                    e.field,
                    e.message + " (stored secrets are only reused for the same host)"
                    if e.field.startswith("config.authentication.password")
                    or e.field.startswith("config.tls.client_key_pem")
                    else e.message,
                )
                for e in errors
            ]
        raise ValidationFailed(errors) from None
    given = cfg.secrets()
    merged = ServerSecrets(
        password=given.get("password", usable.password),
        client_secret=given.get("client_secret", usable.client_secret),
        client_key_pem=given.get("client_key_pem", usable.client_key_pem),
    )
    return ResolvedServer(
        stored.id if stored else 0,
        stored.tenant_id if stored else None,
        cfg.name,
        cfg,
        merged,
    )
