"""Forgot password (README "Web admin UI"): 202 always, a single-use link valid one hour, sent
through the system e-mail server (a real aiosmtpd server with STARTTLS and AUTH)."""

from __future__ import annotations

import re
from datetime import timedelta
from email import message_from_bytes
from email.message import Message

import pytest
from sqlalchemy import select, update
from tests.conftest import Api
from tests.smtp_fixtures import SmtpServer, SmtpServers

from mailgate.adapters.db.tables import PasswordReset
from mailgate.schemas.email_server import EmailServerIn

RESET = "/api/v1/auth/password-reset"


@pytest.fixture
def system_server(api: Api, smtp_servers: SmtpServers) -> SmtpServer:
    return make_system_server(api, smtp_servers)


def make_system_server(api: Api, smtp_servers: SmtpServers) -> SmtpServer:
    """The system e-mail server: a real SMTP server with STARTTLS and AUTH."""
    smtp = smtp_servers.start(tls="starttls", users={"mailgate": "smtp-pw-1"}, auth_required=True)
    body = smtp.password_config(
        "mailgate", "smtp-pw-1", message_defaults={"from_address": "mailgate@example.com"}
    )
    c = api.container
    with c.session() as db:
        c.servers.create(db, None, EmailServerIn.model_validate(body))
    return smtp


def mails_to(smtp: SmtpServer, address: str) -> list[Message]:
    return [message_from_bytes(m.content) for m in smtp.received if address in m.rcpt_tos]


def token_from(mail: Message) -> str:
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    m = re.search(r"/ui/reset-password\?token=(\S+)", body.decode())
    assert m, body
    return m.group(1)


def rows(api: Api) -> list[PasswordReset]:
    with api.container.session() as db:
        return list(db.scalars(select(PasswordReset)))


def test_reset_link_round_trip(api: Api, system_server: SmtpServer) -> None:
    admin = api.admin_token()
    old = api.make_user(admin, "forgetful", {"home": "user"})
    assert api.request("PATCH", "/api/v1/users/forgetful", admin, json={"email": "f@example.com"})
    r = api.client.post(RESET, json={"username": "forgetful"})
    assert r.status_code == 202, r.text
    [mail] = mails_to(system_server, "f@example.com")
    assert mail["From"].endswith("<mailgate@example.com>")
    token = token_from(mail)
    # Only the hash is stored.
    assert [row.token_hash for row in rows(api)] != [token]
    assert token not in str([(row.token_hash, row.user_id) for row in rows(api)])

    # A weak password is refused and does not use up the link.
    r = api.client.post(f"{RESET}/confirm", json={"token": token, "password": "short"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "password"

    r = api.client.post(f"{RESET}/confirm", json={"token": token, "password": "brand-new-pw-1"})
    assert r.status_code == 200, r.text
    assert api.request("GET", "/api/v1/auth/me", old).status_code == 401  # sessions ended
    api.login("forgetful", "brand-new-pw-1")
    # Single use.
    r = api.client.post(f"{RESET}/confirm", json={"token": token, "password": "another-pw-22"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "token"
    api.login("forgetful", "brand-new-pw-1")


def test_no_account_enumeration(api: Api, system_server: SmtpServer) -> None:
    admin = api.admin_token()
    api.make_user(admin, "no-mail", {"home": "user"})  # no e-mail address
    answers = [
        api.client.post(RESET, json={"username": name}) for name in ("ghost", "no-mail", "admin")
    ]
    assert {r.status_code for r in answers} == {202}
    assert len({r.text for r in answers}) == 1
    assert system_server.received == []
    assert rows(api) == []


def test_expired_link_and_throttle(api: Api, system_server: SmtpServer) -> None:
    admin = api.admin_token()
    api.make_user(admin, "late", {"home": "user"})
    api.request("PATCH", "/api/v1/users/late", admin, json={"email": "late@example.com"})
    assert api.client.post(RESET, json={"username": "late"}).status_code == 202
    # Asking again at once sends nothing more (no mailbox flooding), but answers the same.
    assert api.client.post(RESET, json={"username": "late"}).status_code == 202
    [mail] = mails_to(system_server, "late@example.com")
    token = token_from(mail)
    with api.container.session() as db:
        db.execute(update(PasswordReset).values(expires_at=api.container.clock() - timedelta(1)))
    r = api.client.post(f"{RESET}/confirm", json={"token": token, "password": "brand-new-pw-1"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "token"


def test_without_system_server_nothing_breaks(
    api: Api, smtp_servers: SmtpServers, caplog: pytest.LogCaptureFixture
) -> None:
    admin = api.admin_token()
    api.make_user(admin, "lonely", {"home": "user"})
    api.request("PATCH", "/api/v1/users/lonely", admin, json={"email": "l@example.com"})
    with caplog.at_level("WARNING", logger="mailgate.password_reset"):
        r = api.client.post(RESET, json={"username": "lonely"})
    assert r.status_code == 202
    assert "no system e-mail server is configured" in caplog.text
    # The unsent link is spent: it works for nobody and does not count against the limit.
    [row] = rows(api)
    assert row.used_at is not None
    # Once a system e-mail server exists, the very next request sends.
    smtp = make_system_server(api, smtp_servers)
    caplog.clear()
    with caplog.at_level("WARNING", logger="mailgate.password_reset"):
        assert api.client.post(RESET, json={"username": "lonely"}).status_code == 202
    assert [r for r in caplog.records if r.name == "mailgate.password_reset"] == []
    [mail] = mails_to(smtp, "l@example.com")
    token_from(mail)
    # Asking again at once sends nothing, and says so in the log (not to the asker).
    with caplog.at_level("WARNING", logger="mailgate.password_reset"):
        assert api.client.post(RESET, json={"username": "lonely"}).status_code == 202
    assert "not sent: a link went out less than" in caplog.text
    assert len(smtp.received) == 1


def test_unsent_resets_are_logged_without_the_name(
    api: Api, system_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = api.admin_token()
    api.make_user(admin, "no-address", {"home": "user"})
    with caplog.at_level("WARNING", logger="mailgate.password_reset"):
        for name in ("typed-my-Passw0rd-here", "no-address"):
            assert api.client.post(RESET, json={"username": name}).status_code == 202
    assert "no user of that name" in caplog.text
    assert "has no e-mail address" in caplog.text
    assert "typed-my-Passw0rd-here" not in caplog.text
    assert system_server.received == []


def test_bad_input(api: Api) -> None:
    assert api.client.post(RESET, json={}).status_code == 422
    r = api.client.post(f"{RESET}/confirm", json={"token": "x", "password": "long-enough-1"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "token"
