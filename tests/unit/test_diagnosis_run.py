"""The server test (services/diagnosis/run.py) on a fake ``ports.Prober``: what it reports for
each way a transport can end, without any network."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mailgate.domain.transport import Failure, FailureKind, Reply, Step
from mailgate.ports import ProbeFailed, TokenProvider
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets
from mailgate.services.diagnosis.hints import KIND_HINTS
from mailgate.services.diagnosis.run import Diagnosis, run_test

TO = "rcpt@example.org"


def server(**overrides: Any) -> ResolvedServer:
    body = {
        "name": "MX",
        "host": "mx.example.com",
        "message_defaults": {"from_address": "sender@example.com"},
        **overrides,
    }
    cfg = EmailServerIn.model_validate(body)
    return ResolvedServer(1, 1, "MX", cfg, ServerSecrets())


class FakeProbe:
    """Plays a script: the steps ``open`` reports, then what ``send`` does."""

    step_names = ("token", "send")

    def __init__(
        self,
        on_step: Callable[[Step], None],
        *,
        open_fails: Failure | None = None,
        refuse: Failure | None = None,
        hang: bool = False,
        crash: bool = False,
    ) -> None:
        self.on_step = on_step
        self.open_fails = open_fails
        self.refuse = refuse
        self.hang = hang
        self.crash = crash
        self.budget_s = 0.2
        self.transcript: list[str] = []
        self._warnings = ["plain text", "plain text"]
        self.opened = False
        self.closed = False
        self.sent: list[tuple[str, str, bytes, bool]] = []

    @property
    def warnings(self) -> list[str]:
        return self._warnings if self.opened else []

    def note(self, text: str) -> None:
        self.transcript.append(f"*  {text}")

    async def open(self) -> None:
        self.transcript.append("> token request")
        if self.crash:
            raise RuntimeError("secret-in-the-text")
        if self.open_fails is not None:
            self.on_step(Step(self.open_fails.step, False, 1, self.open_fails.detail))
            raise ProbeFailed(self.open_fails)
        self.on_step(Step("token", True, 1, "token for the mailbox"))
        self.opened = True

    async def send(
        self, mail_from: str, rcpt_to: str, raw: bytes, *, dry_run: bool
    ) -> Failure | None:
        self.sent.append((mail_from, rcpt_to, raw, dry_run))
        if self.hang:
            await asyncio.sleep(10)
        if dry_run:
            return None
        ok = self.refuse is None
        self.on_step(Step("send", ok, 1, "accepted" if ok else "refused"))
        return self.refuse

    async def close(self) -> None:
        self.closed = True


class FakeProber:
    def __init__(self, **script: Any) -> None:
        self.script = script
        self.probes: list[FakeProbe] = []

    def probe(
        self, server: ResolvedServer, tokens: TokenProvider | None, on_step: Callable[[Step], None]
    ) -> FakeProbe:
        probe = FakeProbe(on_step, **self.script)
        self.probes.append(probe)
        return probe


def run(
    prober: FakeProber, target: ResolvedServer | None = None, mode: Any = "send"
) -> tuple[Diagnosis, list[Step]]:
    seen: list[Step] = []
    result = asyncio.run(
        run_test(
            target or server(),
            prober=prober,
            to=TO,
            mode=mode,
            label="home/MX",
            clock=lambda: datetime(2026, 1, 2, tzinfo=UTC),
            on_step=seen.append,
        )
    )
    return result, seen


def test_a_passing_test_sends_the_test_message_and_reports_every_step() -> None:
    prober = FakeProber()
    result, seen = run(prober)
    assert result.ok and result.hint is None
    assert [s.step for s in result.steps] == ["token", "send"] == [s.step for s in seen]
    [probe] = prober.probes
    mail_from, rcpt_to, raw, dry_run = probe.sent[0]
    assert (mail_from, rcpt_to, dry_run) == ("sender@example.com", TO, False)
    assert b"Subject: mailgate test e-mail: home/MX" in raw
    assert result.message_id is not None and result.message_id.encode() in raw
    assert result.transcript == ["> token request"]
    assert result.warnings == ["plain text"], "once each"
    assert probe.closed


def test_a_dry_run_sends_nothing_and_has_no_message_id() -> None:
    prober = FakeProber()
    result, _ = run(prober, mode="dry_run")
    assert result.ok and result.message_id is None
    assert prober.probes[0].sent[0][3] is True


def test_a_refusal_is_a_failed_test_with_a_hint_from_the_reply() -> None:
    refusal = Failure("rcpt_to", FailureKind.REPLY, Reply(550, "5.1.1", "no such user"))
    result, _ = run(FakeProber(refuse=refusal))
    assert not result.ok
    assert result.hint is not None and "does not know this recipient" in result.hint


def test_a_failed_open_hints_by_kind_and_knows_no_warnings() -> None:
    failure = Failure("auth", FailureKind.OAUTH2_TOKEN, None, "no token")
    prober = FakeProber(open_fails=failure)
    result, _ = run(prober)
    assert not result.ok and result.hint == KIND_HINTS[FailureKind.OAUTH2_TOKEN]
    assert [(s.step, s.ok) for s in result.steps] == [("auth", False)]
    assert result.warnings == [] and result.message_id is None
    assert prober.probes[0].sent == [] and prober.probes[0].closed


def test_an_app_only_microsoft_refusal_gets_the_oauth2_hint() -> None:
    target = server(
        authentication={
            "method": "oauth2",
            "provider": "microsoft",
            "grant": "client_credentials",
            "username": "sender@example.com",
            "directory_tenant_id": "contoso",
            "client_id": "app",
            "client_secret": "s3cret-value",
        }
    )
    failure = Failure("auth", FailureKind.AUTH_FAILED, Reply(535, "5.7.3", "unsuccessful"))
    result, _ = run(FakeProber(open_fails=failure), target)
    assert result.hint is not None and "SMTP.SendAsApp" in result.hint


def test_the_budget_blames_the_first_step_not_reported() -> None:
    prober = FakeProber(hang=True)
    result, _ = run(prober)
    assert not result.ok
    assert [(s.step, s.ok) for s in result.steps] == [("token", True), ("send", False)]
    assert "time budget" in result.steps[-1].detail
    assert result.hint == KIND_HINTS[FailureKind.TIMEOUT]
    assert result.warnings == ["plain text"] and prober.probes[0].closed


def test_no_sender_stops_before_sending() -> None:
    prober = FakeProber()
    result, _ = run(prober, server(message_defaults={"from_address": None}))
    assert not result.ok and prober.probes[0].sent == []
    assert result.steps[-1] == Step(
        "mail_from", False, 0, "no sender: set message_defaults.from_address"
    )
    assert result.hint is not None and "from_address" in result.hint


def test_a_bug_is_a_failed_step_that_names_only_the_exception_type() -> None:
    result, _ = run(FakeProber(crash=True))
    assert not result.ok
    assert result.steps[-1].detail == "internal error (RuntimeError)"
    assert "secret-in-the-text" not in str(result.as_dict())
