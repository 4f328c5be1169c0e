"""Run the test of an e-mail server configuration (README "Test an e-mail server").

The test drives the configuration's transport through the ``ports.Prober`` it is given, step
by step (for SMTP: resolve, connect, tls, ehlo, auth, mail_from, rcpt_to, data), and reports
every step, the redacted transcript, warnings and a hint. It never raises for a transport or
network problem: every failure is a step result. It never runs longer than the configured
timeouts allow (each step is bounded, and the whole test by the probe's budget).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from mailgate.domain.clock import Clock
from mailgate.domain.errors import MailgateError
from mailgate.domain.oauth2_providers import oauth2_hint
from mailgate.domain.transport import Failure, FailureKind, Reply, Step
from mailgate.ports import ProbeFailed, Prober, TokenProvider
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.diagnosis.hints import hint_for
from mailgate.services.diagnosis.message import build_test_message, header_problem, sender_of
from mailgate.services.oauth2.tokens import OAuth2TokenProvider

log = logging.getLogger("mailgate.server_test")

Mode = Literal["send", "dry_run"]


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


def token_provider(
    tokens_for: Callable[[ResolvedServer], TokenProvider | None], server: ResolvedServer
) -> TokenProvider | None:
    """The OAuth2 token provider to test ``server`` with; ``None`` for other methods and for
    an unsaved new configuration (it has no tokens yet)."""
    if server.config.authentication.method != "oauth2" or not server.id:
        return None
    try:
        return tokens_for(server)
    except MailgateError:
        return None


def _hint(server: ResolvedServer, failure: Failure) -> str | None:
    return _hint_for(server, failure.step, failure.kind, failure.reply)


def _hint_for(
    server: ResolvedServer, step: str, kind: FailureKind | None, reply: Reply | None
) -> str | None:
    cfg = server.config
    if cfg.via_api:  # HTTP replies: the API hints, never the SMTP rules
        app_only = cfg.authentication.grant == "client_credentials"
        return hint_for(step, kind, reply, transport=cfg.transport, app_only=app_only)
    return oauth2_hint(cfg.authentication.model_dump(), kind) or hint_for(step, kind, reply)


class _Stop(Exception):
    """The test ends early with the step already recorded."""


async def run_test(
    server: ResolvedServer,
    *,
    prober: Prober,
    to: str,
    mode: Mode,
    label: str,
    clock: Clock,
    token_provider: TokenProvider | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Diagnosis:
    """Run the diagnosis. Never raises for transport, TLS, DNS or network failures."""
    started = time.monotonic()
    cfg = server.config
    steps = StepLog(on_step)
    probe = prober.probe(server, token_provider, steps.append)
    if isinstance(token_provider, OAuth2TokenProvider):
        token_provider.note = probe.note  # the token step shows in the transcript
    hint: str | None = None
    message_id: str | None = None
    ok = False
    try:
        async with asyncio.timeout(probe.budget_s):
            if (problem := header_problem(cfg)) is not None:
                # Refused before connecting: nothing of it reaches the server.
                steps.append(Step("mail_from", False, 0, problem))
                hint = "Correct the message defaults: " + problem
                raise _Stop
            await probe.open()
            envelope_from = sender_of(cfg)[1]
            built = build_test_message(cfg, label, to, clock)
            if built is None or envelope_from is None:
                steps.append(
                    Step("mail_from", False, 0, "no sender: set message_defaults.from_address")
                )
                hint = "Set message_defaults.from_address: the test needs a sender address."
            else:
                message_id, raw = built
                refused = await probe.send(envelope_from, to, raw, dry_run=mode == "dry_run")
                ok = refused is None
                if refused is not None:
                    hint = _hint(server, refused)
                if mode == "dry_run":
                    message_id = None
    except _Stop:
        pass
    except ProbeFailed as exc:
        hint = _hint(server, exc.failure)
    except TimeoutError:
        done = {s.step for s in steps}
        names = probe.step_names
        pending = next((s for s in names if s not in done), names[-1])
        steps.append(Step(pending, False, 0, "the test took longer than its time budget"))
        hint = _hint_for(server, pending, FailureKind.TIMEOUT, None)
    except Exception as exc:  # a bug must not turn into a 500 or leak a secret
        # Type and place only: an exception text could carry a secret.
        where = "".join(traceback.format_tb(exc.__traceback__))
        log.error("server test failed unexpectedly: %s\n%s", type(exc).__name__, where)
        steps.append(Step("connect", False, 0, f"internal error ({type(exc).__name__})"))
    finally:
        try:
            async with asyncio.timeout(cfg.timeouts.command_s + 1):
                await probe.close()
        except (TimeoutError, OSError):
            pass
    return Diagnosis(
        ok=ok,
        mode=mode,
        steps=list(steps),
        transcript=probe.transcript,
        hint=hint,
        warnings=list(dict.fromkeys(probe.warnings)),
        ms=int((time.monotonic() - started) * 1000),
        message_id=message_id,
    )
