"""The SMTP transport against real aiosmtpd servers (tests/smtp_fixtures.py)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from tests.smtp_fixtures import HOST, SmtpServers, resolved

from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import SendResult
from mailgate.adapters.smtp.session import SmtpSession
from mailgate.adapters.smtp.transcript import Transcript
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import Step
from mailgate.services.diagnosis.hints import hint_for

PASSWORD = "Corr3ct-Horse-Battery"
MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def secret_forms(*secrets: str) -> list[str]:
    out = []
    for s in secrets:
        out += [s, base64.b64encode(s.encode()).decode()]
    return out


def assert_clean(transcript: Transcript, *secrets: str, extra: str = "") -> None:
    text = "\n".join(transcript.lines) + extra
    for form in secret_forms(*secrets):
        assert form not in text


class Run:
    def __init__(self) -> None:
        self.transcript = Transcript()
        self.steps: list[Step] = []
        self.error: TransportError | None = None
        self.results: list[SendResult] = []
        self.session: SmtpSession | None = None

    def names(self) -> list[str]:
        return [s.step for s in self.steps]

    def failed(self) -> Step:
        return next(s for s in self.steps if not s.ok)


def run(
    body: dict[str, Any],
    *,
    messages: int = 1,
    rcpt: list[str] | None = None,
    message: bytes = MESSAGE,
    keep_open: bool = False,
    dry_run: bool = False,
    **kw: Any,
) -> Run:
    r = Run()

    async def go() -> None:
        try:
            session = await SmtpSession.open(
                resolved(body), transcript=r.transcript, steps=r.steps, **kw
            )
        except TransportError as exc:
            r.error = exc
            return
        r.session = session
        try:
            for _ in range(messages):
                r.results.append(
                    await session.send(
                        "a@example.com", rcpt or ["b@example.org"], message, dry_run=dry_run
                    )
                )
        except TransportError as exc:
            r.error = exc
        finally:
            await session.close()

    asyncio.run(go())
    return r


def test_plain_server_delivers_with_envelope_and_size(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    r = run(server.config(), messages=2, rcpt=["b@example.org", "c@example.org"])
    assert r.error is None
    assert [x.outcome for x in r.results] == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert r.names()[:5] == ["resolve", "connect", "tls", "ehlo", "auth"]
    assert r.names()[5:] == ["mail_from", "rcpt_to", "data"] * 2
    got = server.wait_for(2)
    assert got[0].mail_from == "a@example.com"
    assert got[0].rcpt_tos == ["b@example.org", "c@example.org"]
    assert got[0].content.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    assert f"SIZE={len(MESSAGE)}" in got[0].mail_options
    assert server.commands.count("EHLO client.mailgate.test") == 1, "one session, one EHLO"
    assert r.transcript.lines[-2:] == ["C: QUIT", "S: 221 Bye"]


@pytest.mark.parametrize("mechanisms", [("PLAIN", "LOGIN"), ("LOGIN",)])
def test_starttls_with_password(smtp_servers: SmtpServers, mechanisms: tuple[str, ...]) -> None:
    server = smtp_servers.start(tls="starttls", users={"alice": PASSWORD}, mechanisms=mechanisms)
    r = run(server.password_config("alice", PASSWORD))
    assert r.error is None and r.results[0].outcome is Outcome.DELIVERED
    [msg] = server.wait_for(1)
    assert msg.login == "alice" and msg.tls
    assert server.auth_attempts == [(mechanisms[0], "alice")]
    tls_step = r.steps[2]
    assert tls_step.ok and tls_step.detail.startswith("STARTTLS: TLS")
    assert f"AUTH {mechanisms[0]}" in "\n".join(r.transcript.lines)
    assert_clean(r.transcript, PASSWORD, "alice\x00alice\x00" + PASSWORD)


@pytest.mark.parametrize("mechanisms", [("PLAIN",), ("LOGIN",)])
def test_wrong_password(smtp_servers: SmtpServers, mechanisms: tuple[str, ...]) -> None:
    server = smtp_servers.start(tls="implicit", users={"alice": PASSWORD}, mechanisms=mechanisms)
    wrong = "Wr0ng-password-123"
    r = run(server.password_config("alice", wrong))
    assert r.error is not None
    # Temporary: a wrong password must not fail the queued mail (Postfix soft-bounces too).
    assert (r.error.step, r.error.kind, r.error.outcome) == ("auth", "auth_failed", "temporary")
    assert r.error.reply is not None and r.error.reply.code == 535
    assert r.failed().step == "auth" and "535" in r.failed().detail
    hint = hint_for(r.error.step, r.error.kind, r.error.reply)
    assert hint and "user name and password" in hint
    assert_clean(r.transcript, wrong, extra=r.error.detail)
    assert not server.received


def test_implicit_tls(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="implicit")
    r = run(server.config())
    assert r.error is None
    assert r.steps[2].detail.startswith("implicit TLS: TLS")
    assert server.wait_for(1)[0].tls


def test_self_signed_is_refused_until_its_certificate_is_trusted(
    smtp_servers: SmtpServers,
) -> None:
    server = smtp_servers.start(tls="starttls", cert="self_signed")
    r = run(server.config())
    assert r.error is not None
    assert (r.error.step, r.error.kind) == ("tls", "cert_untrusted")
    assert "self-signed" in r.error.detail
    assert "ca_certificates_pem" in (hint_for("tls", r.error.kind, None) or "")
    pki = server.pki
    assert pki is not None
    trusted = server.config(tls={"ca_certificates_pem": pki.self_signed_cert_pem.decode()})
    assert run(trusted).error is None


def test_unknown_ca_and_expired_certificate(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="implicit")
    r = run(server.config(tls={"ca_certificates_pem": None}))
    assert r.error is not None and r.error.kind == "cert_untrusted"
    assert [(s.step, s.ok) for s in r.steps] == [
        ("resolve", True),
        ("connect", True),
        ("tls", False),
    ]
    expired = smtp_servers.start(tls="starttls", cert="expired")
    r = run(expired.config())
    assert r.error is not None and r.error.kind == "cert_expired"


def test_wrong_host_name_and_verify_off_warns(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="starttls", cert="wrong_host")
    r = run(server.config())
    assert r.error is not None and r.error.kind == "hostname_mismatch"
    assert HOST in r.error.detail
    r = run(server.config(tls={"verify": False}))
    assert r.error is None and r.results[0].outcome is Outcome.DELIVERED
    assert r.session is not None
    assert any("verification is off" in w for w in r.session.warnings)
    assert "NOT verified" in r.steps[2].detail


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_client_certificate(smtp_servers: SmtpServers, tls: Any) -> None:
    server = smtp_servers.start(tls=tls, require_client_cert=True)
    r = run(server.config())
    assert r.error is not None and r.error.kind in ("tls_failed", "cert_untrusted")
    assert "client certificate" in r.error.detail or "client certificate" in (
        hint_for(r.error.step, r.error.kind, None) or ""
    )
    pki = server.pki
    assert pki is not None
    with_cert = server.config(
        tls={"client_certificate_pem": pki.client_cert_pem, "client_key_pem": pki.client_key_pem}
    )
    r = run(with_cert)
    assert r.error is None and r.results[0].outcome is Outcome.DELIVERED
    assert_clean(r.transcript, pki.client_key_pem)


def test_starttls_required_but_not_offered(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="none")
    r = run(server.config(starttls="required"))
    assert r.error is not None
    assert (r.error.step, r.error.kind) == ("tls", "starttls_missing")
    assert not server.received


def test_opportunistic_never_sends_a_password_in_clear(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="none", users={"alice": PASSWORD}, auth_require_tls=False)
    r = run(server.password_config("alice", PASSWORD, starttls="opportunistic"))
    assert r.error is not None and r.error.kind == "plaintext_auth_refused"
    assert server.auth_attempts == []
    # Explicitly disabled: allowed, with a warning.
    r = run(server.password_config("alice", PASSWORD, starttls="disabled"))
    assert r.error is None
    assert r.session is not None and any("unencrypted" in w for w in r.session.warnings)
    assert_clean(r.transcript, PASSWORD)


def test_auth_not_offered(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="starttls", users={"alice": PASSWORD}, offer_auth=False)
    r = run(server.password_config("alice", PASSWORD))
    assert r.error is not None and (r.error.step, r.error.kind) == ("auth", "auth_missing")


class FakeTokens:
    """A token provider that hands out ``tokens`` in turn (a refresh takes the next one)."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls: list[bool] = []

    async def access_token(self, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        if force_refresh:
            self.tokens.pop(0)
        return self.tokens[0]


def oauth_body(server: Any) -> dict[str, Any]:
    return server.config(
        authentication={
            "method": "oauth2",
            "provider": "microsoft",
            "grant": "client_credentials",
            "username": "sender@example.com",
            "directory_tenant_id": "organizations",
            "client_id": "app",
            "client_secret": "client-secret-value",
        }
    )


def test_xoauth2_refreshes_once_after_535(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(
        tls="starttls", xoauth2=lambda user, token: (user, token) == ("sender@example.com", "new")
    )
    tokens = FakeTokens("stale-token-1", "new")
    r = run(oauth_body(server), token_provider=tokens)
    assert r.error is None, r.error
    assert tokens.calls == [False, True]
    assert [a[0] for a in server.auth_attempts] == ["XOAUTH2", "XOAUTH2"]
    assert server.wait_for(1)[0].login == "sender@example.com"
    assert_clean(r.transcript, "stale-token-1", "client-secret-value")


@pytest.mark.parametrize("style", ["microsoft", "google"])
def test_xoauth2_failure_styles(smtp_servers: SmtpServers, style: Any) -> None:
    server = smtp_servers.start(tls="implicit", xoauth2=lambda u, t: False, xoauth2_style=style)
    tokens = FakeTokens("bad-token-aaaa", "bad-token-bbbb")
    r = run(oauth_body(server), token_provider=tokens)
    assert r.error is not None and r.error.kind == "auth_failed"
    assert r.error.reply is not None and r.error.reply.code == 535
    assert tokens.calls == [False, True], "one forced refresh, then give up"
    if style == "microsoft":
        assert r.error.reply.enhanced == "5.7.3"
    else:
        assert "status 401" in r.error.detail
        assert "C: (empty line)" in r.transcript.lines
    assert_clean(r.transcript, "bad-token-aaaa", "bad-token-bbbb", extra=r.error.detail)


def test_xoauth2_without_token_or_provider_failure(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="starttls", xoauth2=lambda u, t: True)
    r = run(oauth_body(server))
    assert r.error is not None and r.error.kind == "no_token_provider"

    class Broken:
        async def access_token(self, *, force_refresh: bool = False) -> str:
            raise RuntimeError("invalid_grant: AADSTS70000 the grant is expired")

    r = run(oauth_body(server), token_provider=Broken())
    assert r.error is not None and r.error.kind == "oauth2_token"
    assert isinstance(r.error.__cause__, RuntimeError)
    assert "invalid_grant" in r.error.detail


def test_refused_recipients_are_classified_one_by_one(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    server.refuse("gone@example.org", "550 5.1.1 no such user")
    server.refuse("full@example.org", "452 4.2.2 mailbox full")
    r = run(server.config(), rcpt=["ok@example.org", "gone@example.org", "full@example.org"])
    [res] = r.results
    assert res.outcome is Outcome.TEMPORARY
    assert res.delivered == ["ok@example.org"]
    assert res.permanent == ["gone@example.org"]
    assert res.temporary == ["full@example.org"]
    assert res.recipients["gone@example.org"].reply is not None
    assert server.wait_for(1)[0].rcpt_tos == ["ok@example.org"]


def test_all_refused_then_the_session_carries_on(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    server.refuse("gone@example.org")
    r = run(server.config(), rcpt=["gone@example.org"], messages=1)
    assert r.results[0].outcome is Outcome.PERMANENT and r.results[0].step == "rcpt_to"

    async def two() -> list[SendResult]:
        session = await SmtpSession.open(resolved(server.config()))
        first = await session.send("a@example.com", ["gone@example.org"], MESSAGE)
        second = await session.send("a@example.com", ["b@example.org"], MESSAGE)
        await session.close()
        return [first, second]

    first, second = asyncio.run(two())
    assert first.outcome is Outcome.PERMANENT and second.outcome is Outcome.DELIVERED
    assert "RSET" in server.commands


@pytest.mark.parametrize(
    ("command", "reply", "outcome", "step"),
    [
        ("MAIL", "451 4.3.0 try again later", Outcome.TEMPORARY, "mail_from"),
        (
            "MAIL",
            "550 5.7.60 Client does not have permissions to send as this sender",
            Outcome.PERMANENT,
            "mail_from",
        ),
        ("RCPT", "554 5.7.1 Relay access denied", Outcome.PERMANENT, "rcpt_to"),
        ("DATA", "451 4.3.0 not now", Outcome.TEMPORARY, "data"),
        ("DATA_END", "552 5.3.4 Message size exceeds fixed limit", Outcome.PERMANENT, "data"),
        ("DATA_END", "451 4.7.1 greylisted", Outcome.TEMPORARY, "data"),
    ],
)
def test_scripted_replies(
    smtp_servers: SmtpServers, command: str, reply: str, outcome: Outcome, step: str
) -> None:
    server = smtp_servers.start()
    server.fail(command, reply)
    r = run(server.config(), messages=2)
    first, second = r.results
    assert (first.outcome, first.step) == (outcome, step)
    assert first.reply is not None and str(first.reply) == reply
    assert second.outcome is Outcome.DELIVERED, "a refusal does not spoil the session"
    assert len(server.wait_for(1)) == 1


def test_421_closes_the_session(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    server.fail("MAIL", "421 4.3.2 shutting down")
    r = run(server.config(), messages=1)
    assert r.results[0].outcome is Outcome.TEMPORARY
    assert r.session is not None and not r.session.usable


def test_disconnect_mid_data_is_temporary_and_breaks_the_session(
    smtp_servers: SmtpServers,
) -> None:
    server = smtp_servers.start()
    server.fail("DATA", "disconnect_mid_data")
    r = run(server.config())
    assert r.error is not None
    assert (r.error.step, r.error.outcome, r.error.kind) == ("data", "temporary", "disconnected")
    assert r.session is not None and not r.session.usable
    assert not server.received


def test_silent_server_times_out_at_connect(smtp_servers: SmtpServers) -> None:
    port = smtp_servers.silent_port()
    body = {"host": HOST, "port": port, "starttls": "disabled", "timeouts": {"connect_s": 0.5}}
    started = time.monotonic()
    r = run(body)
    assert time.monotonic() - started < 3
    assert r.error is not None and (r.error.step, r.error.kind) == ("connect", "timeout")


def test_hanging_command_times_out(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    server.fail("RCPT", "hang")
    started = time.monotonic()
    r = run(server.config(timeouts={"connect_s": 2, "command_s": 0.5}))
    assert time.monotonic() - started < 4
    assert r.error is not None and (r.error.step, r.error.kind) == ("rcpt_to", "timeout")


def test_connection_refused_and_dns_failure(smtp_servers: SmtpServers) -> None:
    r = run({"host": HOST, "port": smtp_servers.closed_port(), "starttls": "disabled"})
    assert r.error is not None and (r.error.step, r.error.kind) == ("connect", "refused")
    r = run({"host": "no-such-host.invalid", "port": 25})
    assert r.error is not None and (r.error.step, r.error.kind) == ("resolve", "dns")
    assert r.names() == ["resolve"]


def test_size_limit_is_honoured_before_data(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(size_limit=2048)
    big = MESSAGE + b"x" * 4000 + b"\r\n"
    r = run(server.config(), message=big)
    res = r.results[0]
    assert (res.outcome, res.kind) == (Outcome.PERMANENT, "too_large")
    assert not any(c.startswith("MAIL") for c in server.commands)


def test_smtputf8_addresses(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(smtputf8=True)
    r = run(server.config(), rcpt=["jørgen@example.dk"])
    assert r.results[0].outcome is Outcome.DELIVERED
    [msg] = server.wait_for(1)
    assert msg.rcpt_tos == ["jørgen@example.dk"] and "SMTPUTF8" in msg.mail_options
    plain = smtp_servers.start(smtputf8=False)
    r = run(plain.config(), rcpt=["jørgen@example.dk"])
    assert (r.results[0].outcome, r.results[0].kind) == (Outcome.PERMANENT, "smtputf8")


def test_dry_run_stops_after_rcpt(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start()
    r = run(server.config(), dry_run=True)
    assert r.results[0].outcome is Outcome.DELIVERED
    assert r.names()[-2:] == ["mail_from", "rcpt_to"]
    assert "DATA" not in server.commands and "RSET" in server.commands
    assert server.commands[-1] == "QUIT"
    assert server.count == 0


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [("421 4.7.0 too many connections", "temporary"), ("554 5.7.1 access denied", "permanent")],
)
def test_greeting_refused(smtp_servers: SmtpServers, reply: str, outcome: str) -> None:
    server = smtp_servers.start()
    server.fail("CONNECT", reply)
    r = run(server.config())
    assert r.error is not None
    assert (r.error.step, r.error.outcome) == ("connect", outcome)
    assert r.error.reply is not None and str(r.error.reply) == reply
    assert f"S: {reply}" in r.transcript.lines


def test_unusable_tls_settings_fail_at_tls_not_with_a_crash(smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="starttls")
    # The API refuses such PEM on save; a transport must still fail cleanly with it.
    r = run(server.config(tls={"ca_certificates_pem": "-----BEGIN CERTIFICATE-----\nxx\n"}))
    assert r.error is not None and (r.error.step, r.error.kind) == ("tls", "tls_config")
    assert r.names() == ["resolve", "tls"]
    assert server.commands == []
