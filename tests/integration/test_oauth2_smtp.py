"""XOAUTH2 end to end: the local authorization server issues the tokens, the test SMTP server
(aiosmtpd with STARTTLS) accepts only tokens that server says are live, and mailgate's
transport gets them through the container's token provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from tests.oauth_env import BASE, MAILBOX, Env, make_env, oauth_config
from tests.oauth_server import RunningAuthServer
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import SendResult
from mailgate.adapters.smtp.session import SmtpSession
from mailgate.adapters.smtp.transcript import Transcript
from mailgate.domain.messages import Outcome
from mailgate.domain.oauth2 import NeedsAuthorization


@pytest.fixture
def lite(tmp_path: Path, sqlite_url: str, oauth_server: RunningAuthServer) -> Iterator[Env]:
    # Notifications really go out through the system e-mail server here.
    yield from make_env(tmp_path, sqlite_url, oauth_server, record_mail=False)


def live_check(oauth: RunningAuthServer) -> Any:
    return lambda user, token: oauth.server.token_is_live(token, user)


def add_smtp_config(env: Env, smtp: SmtpServer, name: str, **auth: Any) -> None:
    body = smtp.config(name, authentication=oauth_config(name, **auth)["authentication"])
    r = env.api.request("POST", BASE, env.admin, json=body)
    assert r.status_code == 201, r.text


def send(env: Env, name: str, subject: str = "hello") -> tuple[SendResult, Transcript]:
    row = env.server_row(name)
    resolved = env.c.servers.resolve(row)
    provider = env.c.token_provider_for(resolved)
    assert provider is not None
    msg = EmailMessage()
    msg["From"] = MAILBOX
    msg["To"] = "rcpt@example.org"
    msg["Subject"] = subject
    msg.set_content("sent with XOAUTH2")
    transcript = Transcript()

    async def go() -> SendResult:
        session = await SmtpSession.open(resolved, token_provider=provider, transcript=transcript)
        try:
            return await session.send(MAILBOX, ["rcpt@example.org"], msg.as_bytes())
        finally:
            await session.close()

    return asyncio.run(go()), transcript


def test_authorize_then_send_over_xoauth2(lite: Env, smtp_servers: SmtpServers) -> None:
    smtp = smtp_servers.start(tls="starttls", xoauth2=live_check(lite.oauth))
    add_smtp_config(lite, smtp, "O365")
    lite.authorize("O365")
    result, transcript = send(lite, "O365")
    assert result.outcome is Outcome.DELIVERED
    [received] = smtp.wait_for(1)
    assert received.message["Subject"] == "hello"
    assert smtp.auth_attempts == [("XOAUTH2", MAILBOX)]
    tokens = lite.tokens("O365")
    text = "\n".join(transcript.lines)
    assert "XOAUTH2" in text
    assert tokens["access_token"] not in text
    assert tokens["refresh_token"] not in text


def test_expired_token_is_refreshed_with_rotation(lite: Env, smtp_servers: SmtpServers) -> None:
    smtp = smtp_servers.start(tls="starttls", xoauth2=live_check(lite.oauth))
    add_smtp_config(lite, smtp, "O365")
    lite.authorize("O365")
    assert send(lite, "O365")[0].outcome is Outcome.DELIVERED
    first = lite.tokens("O365")
    # An hour later: the token has expired at the provider and in mailgate's eyes.
    lite.oauth.server.expire_access_tokens()
    lite.clock.offset = timedelta(hours=1)
    assert send(lite, "O365", "second")[0].outcome is Outcome.DELIVERED
    second = lite.tokens("O365")
    assert second["refresh_token"] != first["refresh_token"]
    assert len(lite.oauth.server.refresh_requests()) == 1
    assert len(smtp.auth_attempts) == 2  # no failed AUTH: refreshed before use
    assert len(smtp.wait_for(2)) == 2


@pytest.mark.parametrize("provider", ["microsoft", "google"])
def test_535_forces_one_refresh_and_one_retry(
    lite: Env, smtp_servers: SmtpServers, provider: str
) -> None:
    smtp = smtp_servers.start(
        tls="starttls", xoauth2=live_check(lite.oauth), xoauth2_style=provider
    )
    extra = {"directory_tenant_id": None} if provider == "google" else {}
    add_smtp_config(lite, smtp, "MX", provider=provider, **extra)
    lite.authorize("MX")
    # The provider invalidated the token early (e.g. a password change); mailgate's clock
    # says it is still good, so only the SMTP server's 535 can tell.
    lite.oauth.server.expire_access_tokens()
    result, _ = send(lite, "MX")
    assert result.outcome is Outcome.DELIVERED
    assert len(smtp.auth_attempts) == 2
    assert len(lite.oauth.server.refresh_requests()) == 1


def test_revoked_consent_stops_sending_until_reauthorized(
    lite: Env, smtp_servers: SmtpServers
) -> None:
    for name in ("ann", "bob"):
        r = lite.api.request(
            "POST",
            "/api/v1/users",
            lite.admin,
            json={
                "username": name,
                "email": f"{name}@example.com",
                "password": f"pw-{name}-long-enough-1",
                "roles": {"home": "admin"},
            },
        )
        assert r.status_code == 201, r.text
    system = smtp_servers.start(tls="starttls", users={"mailgate": "system-pw"}, name="system")
    r = lite.api.request(
        "PUT",
        "/api/v1/system/email-server",
        lite.admin,
        json=system.password_config(
            "mailgate", "system-pw", message_defaults={"from_address": "mailgate@example.com"}
        ),
    )
    assert r.status_code in (200, 201), r.text
    smtp = smtp_servers.start(tls="starttls", xoauth2=live_check(lite.oauth))
    add_smtp_config(lite, smtp, "O365")
    lite.authorize("O365")
    lite.oauth.server.revoke()
    lite.oauth.server.expire_access_tokens()
    with pytest.raises(TransportError) as caught:
        send(lite, "O365")
    assert caught.value.kind == "oauth2_token"
    assert caught.value.outcome is Outcome.TEMPORARY
    assert isinstance(caught.value.__cause__, NeedsAuthorization)
    status = lite.status("O365")
    assert status["state"] == "needs_reauthorization"
    assert "AADSTS50173" in status["last_error"]
    notes = system.wait_for(2)
    assert sorted(m.rcpt_tos[0] for m in notes) == ["ann@example.com", "bob@example.com"]
    assert notes[0].login == "mailgate"
    assert "O365" in str(notes[0].message["Subject"])
    assert "AADSTS50173" in notes[0].message.get_content()
    assert smtp.count == 0
    # Trying again does not notify again.
    with pytest.raises(TransportError):
        send(lite, "O365")

    lite.authorize("O365")
    assert send(lite, "O365")[0].outcome is Outcome.DELIVERED
    assert system.count == 2


def test_client_credentials_end_to_end(lite: Env, smtp_servers: SmtpServers) -> None:
    smtp = smtp_servers.start(tls="starttls", xoauth2=live_check(lite.oauth))
    add_smtp_config(lite, smtp, "APP", grant="client_credentials")
    result, _ = send(lite, "APP")
    assert result.outcome is Outcome.DELIVERED
    assert smtp.auth_attempts == [("XOAUTH2", MAILBOX)]
    assert lite.oauth.server.requests[-1].grant_type == "client_credentials"
    assert lite.status("APP")["state"] == "authorized"
    # Without mailbox permission for the app (Add-MailboxPermission), Exchange says 535.
    lite.oauth.server.clients["mailgate-app"].app_mailboxes.clear()
    with pytest.raises(TransportError) as caught:
        send(lite, "APP")
    assert caught.value.kind == "auth_failed"


def test_server_test_endpoint_shows_the_token_step(lite: Env, smtp_servers: SmtpServers) -> None:
    smtp = smtp_servers.start(tls="starttls", xoauth2=live_check(lite.oauth))
    add_smtp_config(lite, smtp, "O365")
    url = f"{BASE}/O365/test"
    r = lite.api.request("POST", url, lite.admin, json={"to": "rcpt@example.org"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False
    auth = next(s for s in body["steps"] if s["step"] == "auth")
    assert "not authorized yet" in auth["detail"]
    assert any("OAuth2: no access token" in line for line in body["transcript"])

    lite.authorize("O365")
    r = lite.api.request("POST", url, lite.admin, json={"to": "rcpt@example.org"})
    body = r.json()
    assert body["ok"] is True, body
    notes = [line for line in body["transcript"] if "OAuth2:" in line]
    assert len(notes) == 1
    assert "reused (still valid)" in notes[0]
    tokens = lite.tokens("O365")
    assert tokens["access_token"] not in r.text
    smtp.wait_for(1)

    # The provider kills the token early: 535, one forced refresh, retry, delivered.
    lite.oauth.server.expire_access_tokens()
    body = lite.api.request("POST", url, lite.admin, json={"to": "rcpt@example.org"}).json()
    assert body["ok"] is True, body
    notes = [line for line in body["transcript"] if "OAuth2:" in line]
    assert "fetched from the token endpoint after the mail server refused" in notes[1]
    assert lite.tokens("O365")["access_token"] not in str(body)


def test_app_only_refusal_hints_at_exchange_setup(lite: Env, smtp_servers: SmtpServers) -> None:
    smtp = smtp_servers.start(tls="starttls", xoauth2=live_check(lite.oauth))
    add_smtp_config(lite, smtp, "APP", grant="client_credentials")
    lite.oauth.server.clients["mailgate-app"].app_mailboxes.clear()
    r = lite.api.request("POST", f"{BASE}/APP/test", lite.admin, json={"to": "rcpt@example.org"})
    body = r.json()
    assert body["ok"] is False
    assert "SMTP.SendAsApp" in body["hint"]
    assert "New-ServicePrincipal" in body["hint"]
