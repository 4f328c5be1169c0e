"""A stored secret is bound to the destination it was entered for (issue 13, point 3):
re-pointing a configuration without sending the secret again drops it (``password_set:
false``), and the test of an unsaved configuration uses stored secrets and tokens only for
exactly the stored destination. The SMTP peers record every AUTH they receive."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from tests.conftest import Api, password_server
from tests.smtp_fixtures import SmtpServers

from mailgate.adapters.db.tables import EmailServer
from mailgate.domain.errors import ValidationFailed
from mailgate.domain.oauth2 import NeedsAuthorization
from mailgate.services.diagnosis.target import resolve_for_test

BASE = "/api/v1/tenants/home/email-servers"
PASSWORD = "Bound-Secret-pw-9"


def _server(api: Api, name: str = "DEFAULT") -> dict[str, Any]:
    r = api.request("GET", f"{BASE}/{name}", api.admin_token())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize(
    "change",
    [{"host": "other.example.com"}, {"port": 2525}, {"protocol": "smtps", "port": 587}],
)
def test_repointing_drops_the_password_unless_it_is_sent_again(
    api: Api, change: dict[str, Any]
) -> None:
    admin = api.admin_token()
    assert api.request("POST", BASE, admin, json=password_server()).status_code == 201
    r = api.request("PATCH", f"{BASE}/DEFAULT", admin, json=change)
    assert r.status_code == 200, r.text
    assert r.json()["authentication"]["password_set"] is False
    with api.container.session() as db:
        row = db.scalar(select(EmailServer).where(EmailServer.name == "DEFAULT"))
        assert row is not None and api.container.servers.secrets_of(row).password is None
    # The configuration stays editable; the password stays unset until it is entered.
    r = api.request("PATCH", f"{BASE}/DEFAULT", admin, json={"helo_name": "x.example.com"})
    assert r.status_code == 200, r.text
    assert r.json()["authentication"]["password_set"] is False

    r = api.request(
        "PATCH",
        f"{BASE}/DEFAULT",
        admin,
        json={"host": "third.example.com", "authentication": {"password": "New-pw-123"}},
    )
    assert r.json()["authentication"]["password_set"] is True


def test_the_old_password_never_reaches_the_new_server(api: Api, smtp_servers: SmtpServers) -> None:
    old = smtp_servers.start(tls="starttls", users={"alice": PASSWORD})
    new = smtp_servers.start(tls="starttls", users={"alice": PASSWORD})  # the attacker's
    admin = api.admin_token()
    r = api.request("POST", BASE, admin, json=old.password_config("alice", PASSWORD))
    assert r.status_code == 201, r.text
    r = api.request("PATCH", f"{BASE}/DEFAULT", admin, json={"port": new.port})
    assert r.status_code == 200 and r.json()["authentication"]["password_set"] is False
    r = api.request("POST", f"{BASE}/DEFAULT/test", admin, json={"to": "x@example.org"})
    result = r.json()
    assert result["ok"] is False
    failed = [s for s in result["steps"] if not s["ok"]]
    assert failed[0]["step"] == "auth" and "enter it again" in failed[0]["detail"]
    assert new.auth_attempts == [] and "AUTH" not in " ".join(new.commands)
    assert PASSWORD not in r.text


def test_repointing_the_token_endpoint_drops_the_client_secret(api: Api) -> None:
    admin = api.admin_token()
    auth = {
        "method": "oauth2",
        "provider": "custom",
        "grant": "client_credentials",
        "username": "sender@example.com",
        "client_id": "app",
        "client_secret": "client-secret-1",
        "authorize_url": "https://idp.example.com/authorize",
        "token_url": "https://idp.example.com/token",
        "scope": "smtp",
    }
    body = {"name": "APP", "host": "smtp.example.com", "authentication": auth}
    assert api.request("POST", BASE, admin, json=body).status_code == 201
    # Unrelated change: kept.
    r = api.request("PATCH", f"{BASE}/APP", admin, json={"helo_name": "a.example.com"})
    assert r.json()["authentication"]["client_secret_set"] is True
    for change in (
        {"token_url": "https://evil.example.net/token"},
        {"authorize_url": "https://evil.example.net/authorize"},
    ):
        # Put the secret back, then re-point without it.
        api.request(
            "PATCH", f"{BASE}/APP", admin, json={"authentication": {"client_secret": "s-2"}}
        )
        r = api.request("PATCH", f"{BASE}/APP", admin, json={"authentication": change})
        assert r.status_code == 200, r.text
        assert r.json()["authentication"]["client_secret_set"] is False, change
    with api.container.session() as db:
        server_id = db.scalar(select(EmailServer.id).where(EmailServer.name == "APP"))
    assert server_id is not None
    with pytest.raises(NeedsAuthorization, match="no client secret"):
        api.container.oauth2.tokens.refresh_now(server_id)


def test_unsaved_config_gets_stored_tokens_only_for_the_same_destination(api: Api) -> None:
    admin = api.admin_token()
    auth = {
        "method": "oauth2",
        "provider": "microsoft",
        "grant": "authorization_code",
        "username": "sender@example.com",
        "directory_tenant_id": "contoso",
        "client_id": "app",
        "client_secret": "client-secret-1",
    }
    body = {"name": "O365", "host": "smtp.office365.com", "authentication": auth}
    assert api.request("POST", BASE, admin, json=body).status_code == 201
    c = api.container
    with c.session() as db:
        row = db.scalar(select(EmailServer).where(EmailServer.name == "O365"))
        assert row is not None
        stored = c.servers.resolve(row)
    public = {k: v for k, v in _server(api, "O365").items() if k in body}
    same = resolve_for_test(c.servers, stored, {**public, "helo_name": "x.example"}, system=False)
    assert same.id == stored.id  # the stored tokens may be used (same server, same app)
    assert same.secrets.client_secret == "client-secret-1"
    elsewhere = resolve_for_test(
        c.servers, stored, {**public, "host": "smtp.evil.example"}, system=False
    )
    assert elsewhere.id == 0  # no stored access token goes to another host as XOAUTH2
    assert elsewhere.secrets.client_secret == "client-secret-1"  # same token endpoint
    other_idp = {
        **public,
        "authentication": {
            **public["authentication"],
            "provider": "custom",
            "directory_tenant_id": None,
            "scope": "smtp",
            "authorize_url": "https://evil.example/a",
            "token_url": "https://evil.example/t",
        },
    }
    with pytest.raises(ValidationFailed, match="client_secret"):
        resolve_for_test(c.servers, stored, other_idp, system=False)
