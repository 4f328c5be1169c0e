"""``POST .../email-servers/{name}/test``, the system e-mail server and ``mailgate server test``,
against real aiosmtpd servers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from tests.conftest import Api, make_settings
from tests.oauth_server import RunningAuthServer
from tests.smtp_fixtures import HOST, SmtpServer, SmtpServers
from typer.testing import CliRunner

from mailgate.adapters.db.tables import EmailServer
from mailgate.bootstrap import build, first_start
from mailgate.entrypoints.api.app import create_app

PASSWORD = "Api-Secret-pw-77"
BASE = "/api/v1/tenants/home/email-servers"
SYSTEM = "/api/v1/system/email-server"
ALL_STEPS = ["resolve", "connect", "tls", "ehlo", "auth", "mail_from", "rcpt_to", "data"]


@dataclass
class LiteApi(Api):
    """One API on SQLite for the whole module (the subject here is SMTP, not the database
    engine), with the admin's token cached: password hashing makes each login slow."""

    token: str = ""

    def admin_token(self) -> str:
        if not self.token:
            self.token = super().admin_token()
        return self.token


@pytest.fixture(scope="module")
def lite_module(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[LiteApi]:
    tmp = tmp_path_factory.mktemp("lite")
    target = tmp / "data" / "mailgate.db"
    target.parent.mkdir(parents=True)
    shutil.copy(sqlite_template, target)
    c = build(make_settings(tmp, f"sqlite:///{target}"))
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        yield LiteApi(client, c)
    c.engine.dispose()


@pytest.fixture
def lite(lite_module: LiteApi) -> Iterator[LiteApi]:
    yield lite_module
    with lite_module.container.session() as db:
        db.execute(delete(EmailServer))


def secure_server(smtp_servers: SmtpServers, **kw: Any) -> SmtpServer:
    return smtp_servers.start(tls="starttls", users={"alice": PASSWORD}, **kw)


def create(api: Api, token: str, body: dict[str, Any], base: str = BASE) -> None:
    r = api.request("POST", base, token, json=body)
    assert r.status_code == 201, r.text


def diagnose(api: Api, token: str, url: str, **body: Any) -> dict[str, Any]:
    r = api.request("POST", url, token, json=body)
    assert r.status_code == 200, r.text
    assert PASSWORD not in r.text
    data: dict[str, Any] = r.json()
    return data


def step_names(result: dict[str, Any]) -> list[str]:
    return [s["step"] for s in result["steps"]]


def failed_step(result: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in result["steps"] if not s["ok"])


def test_send_delivers_a_real_test_email(lite: Api, smtp_servers: SmtpServers) -> None:
    server = secure_server(smtp_servers)
    admin = lite.admin_token()
    create(lite, admin, server.password_config("alice", PASSWORD))
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="rcpt@example.org")
    assert result["ok"] is True, result
    assert step_names(result) == ALL_STEPS
    assert all(s["ok"] and isinstance(s["ms"], int) for s in result["steps"])
    assert result["hint"] is None and result["warnings"] == []
    assert "C: AUTH PLAIN <redacted>" in result["transcript"]

    [msg] = server.wait_for(1)
    assert msg.mail_from == "noreply@example.com" and msg.rcpt_tos == ["rcpt@example.org"]
    assert msg.login == "alice" and msg.tls
    m = msg.message
    assert m["From"] == "Mailgate Test <noreply@example.com>"
    assert m["Reply-To"] == "help@example.com"
    assert m["To"] == "rcpt@example.org"
    assert "mailgate test e-mail" in m["Subject"] and "DEFAULT" in m["Subject"]
    assert m["Message-ID"] == result["message_id"] and m["Message-ID"].endswith("@example.com>")
    assert abs(parsedate_to_datetime(m["Date"]).timestamp() - time.time()) < 120
    body = m.get_body(("plain",))
    assert body is not None and "test e-mail from mailgate" in body.get_content()


def test_dry_run_sends_nothing(lite: Api, smtp_servers: SmtpServers) -> None:
    server = secure_server(smtp_servers)
    admin = lite.admin_token()
    create(lite, admin, server.password_config("alice", PASSWORD))
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="rcpt@example.org", mode="dry_run")
    assert result["ok"] is True
    assert step_names(result) == ALL_STEPS[:-1]
    assert result["message_id"] is None
    assert server.count == 0 and "DATA" not in server.commands
    assert server.commands[-2:] == ["RSET", "QUIT"]


def test_unsaved_config_uses_stored_secrets_only_for_the_same_server(
    lite: Api, smtp_servers: SmtpServers
) -> None:
    old = secure_server(smtp_servers)
    new = secure_server(smtp_servers, mechanisms=("LOGIN",))  # same host, another port
    admin = lite.admin_token()
    create(lite, admin, old.password_config("alice", PASSWORD))
    before = lite.request("GET", f"{BASE}/DEFAULT", admin).json()

    # Exactly the stored server (protocol, host, port), other settings changed: the stored
    # password is used.
    same = old.config(
        authentication={"method": "password", "username": "alice"}, helo_name="other.test"
    )
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="x@example.org", config=same)
    assert result["ok"] is True, result
    assert old.count == 1 and old.auth_attempts == [("PLAIN", "alice")]

    # Another port of the same host, or another host: never the stored password.
    unsaved = new.config(authentication={"method": "password", "username": "alice"})
    for config in (unsaved, {**unsaved, "host": "localhost"}):
        r = lite.request(
            "POST", f"{BASE}/DEFAULT/test", admin, json={"to": "x@example.org", "config": config}
        )
        assert r.status_code == 422, r.text
        [error] = r.json()["errors"]
        assert error["field"] == "config.authentication.password"
        assert "entered for" in error["message"]
    assert new.auth_attempts == [] and new.count == 0

    typed = new.config(
        authentication={"method": "password", "username": "alice", "password": PASSWORD}
    )
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="x@example.org", config=typed)
    assert result["ok"] is True, result
    assert new.count == 1 and new.auth_attempts == [("LOGIN", "alice")]

    r = lite.request("POST", f"{BASE}/DEFAULT/test", admin, json={"config": {**unsaved, "port": 0}})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "config.port" in {e["field"] for e in r.json()["errors"]}
    assert lite.request("GET", f"{BASE}/DEFAULT", admin).json() == before


def test_new_config_can_be_tested_before_its_first_save(
    lite: Api, smtp_servers: SmtpServers
) -> None:
    server = smtp_servers.start()
    admin = lite.admin_token()
    result = diagnose(lite, admin, f"{BASE}/fresh/test", config=server.config(name="fresh"))
    assert result["ok"] is True
    [msg] = server.wait_for(1)
    assert msg.rcpt_tos == ["noreply@example.com"], "default recipient: the from_address"
    assert lite.request("GET", f"{BASE}/fresh", admin).status_code == 404
    assert lite.request("POST", f"{BASE}/fresh/test", admin, json={}).status_code == 404


def _scenario(name: str, smtp_servers: SmtpServers) -> tuple[dict[str, Any], str, str]:
    """(config body, failing step, text expected in the hint) for one known failure."""
    if name == "refused":
        body = {"host": HOST, "port": smtp_servers.closed_port(), "starttls": "disabled"}
        return body, "connect", "Nothing accepts connections"
    if name == "dns":
        return {"host": "no-such-host.invalid", "port": 587}, "resolve", "does not resolve"
    if name == "timeout":
        body = {
            "host": HOST,
            "port": smtp_servers.silent_port(),
            "starttls": "disabled",
            "timeouts": {"connect_s": 0.5, "command_s": 0.5},
        }
        return body, "connect", "did not answer in time"
    if name == "self_signed":
        s = smtp_servers.start(tls="starttls", cert="self_signed")
        return s.config(), "tls", "tls.ca_certificates_pem"
    if name == "unknown_ca":
        s = smtp_servers.start(tls="implicit")
        return s.config(tls={"ca_certificates_pem": None}), "tls", "tls.ca_certificates_pem"
    if name == "wrong_host":
        s = smtp_servers.start(tls="starttls", cert="wrong_host")
        return s.config(), "tls", "does not name this host"
    if name == "starttls_missing":
        s = smtp_servers.start()
        return s.config(starttls="required"), "tls", "does not offer STARTTLS"
    if name == "auth_missing":
        s = secure_server(smtp_servers, offer_auth=False)
        return s.password_config("alice", PASSWORD), "auth", "offers no authentication"
    s = secure_server(smtp_servers)
    body = s.password_config("alice", PASSWORD)
    script: dict[str, tuple[str, str, str, str]] = {
        "wrong_password": ("", "", "auth", "user name and password"),
        "greeting_421": ("CONNECT", "421 4.7.0 Too many connections", "connect", "temporary"),
        "535_5.7.3": ("AUTH", "535 5.7.3 Authentication unsuccessful", "auth", "rejected"),
        "535_5.7.139": (
            "AUTH",
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
            "for the Mailbox",
            "auth",
            "SmtpClientAuthenticationDisabled",
        ),
        "530_starttls": (
            "MAIL",
            "530 5.7.0 Must issue a STARTTLS command first",
            "mail_from",
            "STARTTLS",
        ),
        "550_5.7.60": (
            "MAIL",
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            "mail_from",
            "Send As",
        ),
        "relay_denied": (
            "RCPT",
            "554 5.7.1 <x@example.org>: Relay access denied",
            "rcpt_to",
            "relay",
        ),
        "421": (
            "MAIL",
            "421 4.3.2 Service not available, closing channel",
            "mail_from",
            "temporary",
        ),
        "451": ("RCPT", "451 4.7.1 Greylisted, try again", "rcpt_to", "temporary"),
        "too_large": (
            "DATA_END",
            "552 5.3.4 Message size exceeds fixed maximum",
            "data",
            "larger than the server accepts",
        ),
        "disconnect": ("DATA", "disconnect_mid_data", "data", "closed the connection"),
    }
    command, reply, step, hint = script[name]
    if name == "wrong_password":
        body = s.password_config("alice", "not-the-password")
    else:
        s.fail(command, reply)
    return body, step, hint


SCENARIOS = [
    "refused", "dns", "timeout", "self_signed", "unknown_ca", "wrong_host", "starttls_missing",
    "auth_missing", "wrong_password", "535_5.7.3", "535_5.7.139", "530_starttls", "550_5.7.60",
    "relay_denied", "421", "451", "too_large", "disconnect", "greeting_421",
]  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_known_failures_become_steps_and_hints(
    lite: Api, smtp_servers: SmtpServers, scenario: str
) -> None:
    admin = lite.admin_token()
    body, step, hint = _scenario(scenario, smtp_servers)
    body = {"name": "DEFAULT", **body}
    create(lite, admin, body)
    started = time.monotonic()
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="x@example.org")
    assert time.monotonic() - started < 8, "bounded by the configured timeouts"
    assert result["ok"] is False
    assert failed_step(result)["step"] == step, result["steps"]
    assert step_names(result) == ALL_STEPS[: ALL_STEPS.index(step) + 1]
    assert result["hint"] and hint in result["hint"], result["hint"]
    joined = "\n".join(result["transcript"])
    for secret in (PASSWORD, "not-the-password"):
        assert secret not in joined


def test_verify_off_and_plaintext_warn(lite: Api, smtp_servers: SmtpServers) -> None:
    admin = lite.admin_token()
    wrong = smtp_servers.start(tls="starttls", cert="wrong_host")
    create(lite, admin, wrong.config(tls={"verify": False}))
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="x@example.org")
    assert result["ok"] is True
    assert any("verification is off" in w for w in result["warnings"])
    plain = smtp_servers.start(users={"alice": PASSWORD}, auth_require_tls=False)
    create(lite, admin, plain.password_config("alice", PASSWORD, name="plain"))
    result = diagnose(lite, admin, f"{BASE}/plain/test", to="x@example.org")
    assert result["ok"] is True
    assert any("unencrypted" in w for w in result["warnings"])
    assert PASSWORD not in "\n".join(result["transcript"])


def test_oauth2_without_authorization_fails_at_auth(lite: Api, smtp_servers: SmtpServers) -> None:
    server = smtp_servers.start(tls="starttls", xoauth2=lambda u, t: True)
    admin = lite.admin_token()
    auth = {
        "method": "oauth2",
        "provider": "microsoft",
        "grant": "authorization_code",
        "username": "sender@example.com",
        "directory_tenant_id": "organizations",
        "client_id": "app-id",
        "client_secret": "app-client-secret",
    }
    create(lite, admin, server.config(authentication=auth))
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="x@example.org")
    assert result["ok"] is False and failed_step(result)["step"] == "auth"
    assert result["hint"]
    assert server.count == 0


def test_bad_bodies_are_422_naming_the_field(lite: Api, smtp_servers: SmtpServers) -> None:
    admin = lite.admin_token()
    create(lite, admin, smtp_servers.start().config())
    url = f"{BASE}/DEFAULT/test"
    for body, field in [
        ({"to": "not an address"}, "to"),
        ({"mode": "launch"}, "mode"),
        ({"config": "nope"}, "config"),
        ({"unknown": 1}, "unknown"),
    ]:
        r = lite.request("POST", url, admin, json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in {e["field"] for e in r.json()["errors"]}, r.text
    assert (
        lite.request(
            "POST", url, admin, content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )


def test_tenants_and_roles(lite: Api, smtp_servers: SmtpServers) -> None:
    admin = lite.admin_token()
    create(lite, admin, smtp_servers.start().config())
    lite.make_tenant(admin, "acme")
    outsider = lite.make_user(admin, "acme-admin", {"acme": "admin"})
    r = lite.request("POST", f"{BASE}/DEFAULT/test", outsider, json={"to": "x@example.org"})
    assert r.status_code == 404
    r = lite.request("POST", "/api/v1/tenants/acme/email-servers/DEFAULT/test", outsider, json={})
    assert r.status_code == 404, "acme has no server of that name; home's is invisible"
    reader = lite.make_user(admin, "reader", {"home": "read_only"})
    r = lite.request("POST", f"{BASE}/DEFAULT/test", reader, json={"to": "x@example.org"})
    assert r.status_code == 403


def test_system_email_server(api: Api, smtp_servers: SmtpServers) -> None:
    """Runs on SQLite and PostgreSQL: CRUD of the tenant-less row, and its test."""
    server = secure_server(smtp_servers)
    admin = api.admin_token()
    assert api.request("GET", SYSTEM, admin).status_code == 404
    assert api.request("POST", f"{SYSTEM}/test", admin, json={}).status_code == 404
    body = server.password_config("alice", PASSWORD)
    r = api.request("PUT", SYSTEM, admin, json=body)
    assert r.status_code == 201, r.text
    view = r.json()
    assert "name" not in view and view["authentication"]["password_set"] is True
    assert PASSWORD not in r.text
    view["helo_name"] = "system.mailgate.test"
    r = api.request("PUT", SYSTEM, admin, json=view)
    assert r.status_code == 200 and r.json()["helo_name"] == "system.mailgate.test"
    assert api.request("GET", f"{BASE}", admin).json()["items"] == [], "not a tenant server"

    bad = api.request("PUT", SYSTEM, admin, json={**view, "remote_output": {"enabled": True}})
    assert bad.status_code == 422
    assert api.request("GET", SYSTEM, admin).json()["helo_name"] == "system.mailgate.test"

    result = diagnose(api, admin, f"{SYSTEM}/test", to="ops@example.org")
    assert result["ok"] is True, result
    [msg] = server.wait_for(1)
    assert "system e-mail server" in msg.message["Subject"]
    assert "EHLO system.mailgate.test" in server.commands

    api.make_tenant(admin, "acme")
    tenant_admin = api.make_user(admin, "boss", {"acme": "admin"})
    for method, url in [("GET", SYSTEM), ("PUT", SYSTEM), ("DELETE", SYSTEM),
                        ("POST", f"{SYSTEM}/test")]:  # fmt: skip
        r = api.request(method, url, tenant_admin, json=body if method == "PUT" else {})
        assert r.status_code == 403, (method, url)

    assert api.request("DELETE", SYSTEM, admin).status_code == 204
    assert api.request("GET", SYSTEM, admin).status_code == 404


def test_cli_server_test(
    tmp_path: Path, sqlite_url: str, smtp_servers: SmtpServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailgate.entrypoints.cli import app

    settings = make_settings(tmp_path, sqlite_url)
    for key in ("data_dir", "database_url", "secret_key", "admin_password"):
        monkeypatch.setenv(f"MAILGATE_{key.upper()}", str(getattr(settings, key)))
    c = build(settings)
    first_start(c, echo=lambda _m: None)
    server = secure_server(smtp_servers)
    with c.session() as db:
        c.servers.create(db, _home(db), _cfg(c, server))
    c.engine.dispose()

    runner = CliRunner()
    r = runner.invoke(app, ["server", "test", "home", "DEFAULT", "--to", "x@example.org"])
    assert r.exit_code == 0, r.output
    for step in ALL_STEPS:
        assert step in r.output
    assert "test e-mail accepted" in r.output and PASSWORD not in r.output
    assert server.wait_for(1)[0].rcpt_tos == ["x@example.org"]

    r = runner.invoke(
        app, ["server", "test", "home", "DEFAULT", "--to", "x@example.org", "--dry-run",
              "--transcript"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "data" not in r.output.split("transcript:")[0].split()
    assert "AUTH PLAIN <redacted>" in r.output and PASSWORD not in r.output
    assert server.count == 1

    server.fail("AUTH", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
                        "disabled for the Mailbox")  # fmt: skip
    r = runner.invoke(app, ["server", "test", "home", "DEFAULT", "--to", "x@example.org"])
    assert r.exit_code == 1 and "FAIL" in r.output and "hint:" in r.output
    r = runner.invoke(app, ["server", "test", "home", "NOPE", "--to", "x@example.org"])
    assert r.exit_code == 2


def _home(db: Any) -> Any:
    from sqlalchemy import select

    from mailgate.adapters.db.tables import Tenant

    return db.scalar(select(Tenant).where(Tenant.name == "home"))


def _cfg(c: Any, server: SmtpServer) -> Any:
    return c.servers.parse(server.password_config("alice", PASSWORD))


@pytest.mark.parametrize("style", ["microsoft", "google"])
def test_xoauth2_with_tokens_of_the_authorization_server(
    tmp_path: Path,
    sqlite_url: str,
    smtp_servers: SmtpServers,
    oauth_server: RunningAuthServer,
    style: Any,
) -> None:
    """The SMTP server accepts only live tokens issued by the local OAuth2 server."""
    mailbox = "sender@example.com"
    oauth_server.server.add_client("smtp-app", "smtp-app-secret", app_mailboxes={mailbox})
    smtp = smtp_servers.start(
        tls="starttls",
        xoauth2=lambda user, token: oauth_server.server.token_is_live(token, user),
        xoauth2_style=style,
    )
    c = build(make_settings(tmp_path, sqlite_url, **oauth_server.settings()))
    first_start(c, echo=lambda _m: None)
    auth = {
        "method": "oauth2",
        "provider": "microsoft",
        "grant": "client_credentials",
        "username": mailbox,
        "directory_tenant_id": "contoso",
        "client_id": "smtp-app",
        "client_secret": "smtp-app-secret",
    }
    with TestClient(create_app(c)) as client:
        api = Api(client, c)
        admin = api.admin_token()
        create(api, admin, smtp.config(authentication=auth))
        result = diagnose(api, admin, f"{BASE}/DEFAULT/test", to="x@example.org")
        assert result["ok"] is True, result
        assert "XOAUTH2 as sender@example.com" in result["steps"][4]["detail"]
        assert smtp.wait_for(1)[0].login == mailbox
        tokens = c.servers.tokens_of(_row(c))
        assert tokens, "the token was fetched and stored"
        assert "C: AUTH XOAUTH2 <redacted>" in result["transcript"]
        joined = "\n".join(result["transcript"])
        for value in tokens.values():
            if isinstance(value, str) and len(value) > 8:
                assert value not in joined

        # The mailbox permission is withdrawn: a forced refresh (one) cannot help either.
        oauth_server.server.clients["smtp-app"].app_mailboxes.clear()
        result = diagnose(api, admin, f"{BASE}/DEFAULT/test", to="x@example.org")
        assert result["ok"] is False and failed_step(result)["step"] == "auth"
        if style == "google":
            assert "status 401" in failed_step(result)["detail"]
        else:
            assert "535 5.7.3" in failed_step(result)["detail"]
        assert [a[0] for a in smtp.auth_attempts] == ["XOAUTH2"] + ["XOAUTH2"] * 2
    c.engine.dispose()


def _row(c: Any) -> Any:
    with c.session() as db:
        return c.servers.get(db, _home(db).id, "DEFAULT")


def test_streamed_test_reports_each_step_as_it_completes(
    lite: Api, smtp_servers: SmtpServers
) -> None:
    """``Accept: application/x-ndjson``: step lines as they happen, then the whole result."""
    import json

    server = secure_server(smtp_servers)
    server.fail("MAIL", "hang")  # the dialogue stalls after login, until the command timeout
    admin = lite.admin_token()
    body = server.password_config("alice", PASSWORD)
    body["timeouts"] = {"connect_s": 5, "command_s": 2}
    create(lite, admin, body)

    started = time.monotonic()
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with lite.client.stream(
        "POST",
        f"{BASE}/DEFAULT/test",
        headers={**lite.auth(admin), "Accept": "application/x-ndjson"},
        json={"to": "rcpt@example.org", "mode": "dry_run"},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            if line:
                arrivals.append((time.monotonic() - started, json.loads(line)))
    events = [e for _t, e in arrivals]
    assert [e["event"] for e in events] == ["step"] * 6 + ["result"]
    streamed = [e["step"] for e in events[:-1]]
    result = events[-1]["result"]
    assert streamed == result["steps"]
    assert [s["step"] for s in streamed] == ALL_STEPS[:6]
    assert streamed[-1]["step"] == "mail_from" and not streamed[-1]["ok"]
    # The steps up to the login arrived before the stalled MAIL FROM timed out (2 s).
    auth_at = next(t for t, e in arrivals if e.get("step", {}).get("step") == "auth")
    assert auth_at < arrivals[-1][0] - 1.0
    assert PASSWORD not in json.dumps(events)

    # Problems come before the stream, as ordinary problem documents.
    r = lite.request(
        "POST",
        f"{BASE}/nope/test",
        admin,
        headers={"Accept": "application/x-ndjson"},
        json={"to": "rcpt@example.org"},
    )
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_the_last_test_of_the_saved_settings_is_kept(lite: Api, smtp_servers: SmtpServers) -> None:
    """What the UI's "test failed" badge reads: the outcome of the last test of the stored
    configuration; tests of unsaved settings leave it alone, and a change forgets it."""
    server = secure_server(smtp_servers)
    admin = lite.admin_token()
    create(lite, admin, server.password_config("alice", "wrong-password-1"))
    assert lite.request("GET", f"{BASE}/DEFAULT", admin).json()["last_test"] is None
    result = diagnose(lite, admin, f"{BASE}/DEFAULT/test", to="rcpt@example.org")
    assert result["ok"] is False
    last = lite.request("GET", f"{BASE}/DEFAULT", admin).json()["last_test"]
    assert last["ok"] is False and last["mode"] == "send" and last["step"] == "auth"
    assert last["detail"].startswith("535")
    assert "wrong-password-1" not in str(last)
    # Unsaved settings that pass do not make the stored ones look good.
    good = server.password_config("alice", PASSWORD)
    assert diagnose(lite, admin, f"{BASE}/DEFAULT/test", mode="dry_run", config=good)["ok"]
    assert lite.request("GET", f"{BASE}/DEFAULT", admin).json()["last_test"] == last
    # Saving other settings forgets the old outcome; the next test records the new one.
    r = lite.request("PUT", f"{BASE}/DEFAULT", admin, json=good)
    assert r.status_code == 200, r.text
    assert r.json()["last_test"] is None
    assert diagnose(lite, admin, f"{BASE}/DEFAULT/test", mode="dry_run")["ok"]
    last = lite.request("GET", f"{BASE}/DEFAULT", admin).json()["last_test"]
    assert last["ok"] is True and last["mode"] == "dry_run" and last["step"] is None
