"""Shared OAuth2 test setup: a mailgate container pointed at the local authorization server,
an API client, a movable clock, and the browser round trip (authorize, consent, callback).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.clock import TestClock
from tests.conftest import ADMIN_PASSWORD, Api, make_settings
from tests.oauth_server import RunningAuthServer, query_of

from mailgate.adapters.db.tables import EmailServer, Tenant
from mailgate.bootstrap import Container, build, first_start
from mailgate.entrypoints.api.app import create_app

BASE = "/api/v1/tenants/home/email-servers"
MAILBOX = "sender@example.com"
REDIRECT = "http://testserver/settings/oauth2code"


@dataclass
class RecordingMailer:
    """Stands in for the system e-mail server where only the addressing is under test."""

    sent: list[tuple[str, str, str]] = field(default_factory=list)
    down: bool = False
    """True: every send fails, like a system e-mail server that cannot be reached."""

    def send_system_mail(self, to: str, subject: str, text: str) -> None:
        if self.down:
            raise ConnectionRefusedError("the system e-mail server is down")
        self.sent.append((to, subject, text))


@dataclass
class Env:
    api: Api
    admin: str
    c: Container
    clock: TestClock
    oauth: RunningAuthServer
    mailer: RecordingMailer

    def server_row(self, name: str = "DEFAULT") -> EmailServer:
        with self.c.session() as db:
            return self.c.servers.get(db, self.c_home_id(db), name)

    def c_home_id(self, db: Any) -> int:
        tenant_id = db.scalar(select(Tenant.id).where(Tenant.name == "home"))
        assert tenant_id is not None
        return int(tenant_id)

    def tokens(self, name: str = "DEFAULT") -> dict[str, Any]:
        return self.c.servers.tokens_of(self.server_row(name))

    def status(self, name: str = "DEFAULT") -> dict[str, Any]:
        r = self.api.request("GET", f"{BASE}/{name}", self.admin)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body["oauth2_status"]

    def authorize_url(self, name: str = "DEFAULT") -> str:
        r = self.api.request("POST", f"{BASE}/{name}/oauth2/authorize", self.admin)
        assert r.status_code == 200, r.text
        url: str = r.json()["authorization_url"]
        return url

    def callback(self, redirect: str) -> httpx.Response:
        parts = urlsplit(redirect)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT
        response: httpx.Response = self.api.client.get(
            f"{parts.path}?{parts.query}", follow_redirects=False
        )
        return response

    def authorize(self, name: str = "DEFAULT") -> None:
        r = self.callback(self.oauth.consent(self.authorize_url(name)))
        assert r.status_code == 303, r.text
        assert query_of(r.headers["location"])["oauth2"] == "ok", r.headers["location"]


def oauth_config(name: str = "DEFAULT", **auth: Any) -> dict[str, Any]:
    authentication = {
        "method": "oauth2",
        "provider": "microsoft",
        "grant": "authorization_code",
        "username": MAILBOX,
        "directory_tenant_id": "contoso-tenant",
        "client_id": "mailgate-app",
        "client_secret": "app-secret-value",
    }
    authentication.update(auth)
    return {
        "name": name,
        "host": "smtp.example.com",
        "port": 587,
        "authentication": authentication,
        "message_defaults": {"from_address": MAILBOX},
    }


def make_env(
    tmp_path: Path,
    database_url: str,
    oauth_server: RunningAuthServer,
    *,
    record_mail: bool = True,
    **settings: Any,
) -> Iterator[Env]:
    """``record_mail``: notifications go to ``env.mailer`` instead of the system server;
    ``settings``: more ``Settings`` overrides (e.g. the mail API servers' URLs)."""
    oauth_server.server.add_client(
        "mailgate-app", "app-secret-value", {REDIRECT}, app_mailboxes={MAILBOX}
    )
    clock = TestClock(ticking=True)
    mailer = RecordingMailer()
    c = build(
        make_settings(tmp_path, database_url, **oauth_server.settings(), **settings),
        clock=clock,
        system_mailer=mailer if record_mail else None,
    )
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        api = Api(client, c)
        admin = api.login("admin", ADMIN_PASSWORD)
        r = api.request("POST", BASE, admin, json=oauth_config())
        assert r.status_code == 201, r.text
        yield Env(api, admin, c, clock, oauth_server, mailer)
    c.engine.dispose()
