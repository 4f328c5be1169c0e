"""Secrets are write-only and encrypted at rest.

Configurations are created with known secret values (password, OAuth2 client secret, TLS
client key). Then no API response, no log record, no byte of the SQLite file and its WAL,
and no PostgreSQL row (as text) may contain them; yet mailgate can still decrypt them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import text
from sqlalchemy.engine import make_url
from tests.conftest import Api, password_server

from mailgate.adapters.db.tables import Base

BASE = "/api/v1/tenants/home/email-servers"
PASSWORD = "pw-AT-REST-1f9c2e7b"
NEW_PASSWORD = "pw-AT-REST-second-55aa"
CLIENT_SECRET = "cs-AT-REST-8d3a6b0c"
_CERT = trustme.CA().issue_cert("client.example.com")
CERT_PEM = _CERT.cert_chain_pems[0].bytes().decode()
KEY_PEM = _CERT.private_key_pem.bytes().decode()
# Every base64 line of the key body, so that no fragment of it may leak either.
KEY_LINES = [line for line in KEY_PEM.splitlines() if line and not line.startswith("-----")]
SECRETS = [PASSWORD, NEW_PASSWORD, CLIENT_SECRET, *KEY_LINES]


def leaked(haystack: str | bytes) -> list[str]:
    data = haystack.encode() if isinstance(haystack, str) else haystack
    return [s[:12] + "..." for s in SECRETS if s.encode() in data]


def create_configs(api: Api, admin: str) -> list[Any]:
    """Create, read, replace and patch configs with secrets; return every response."""
    oauth = password_server(
        "o365",
        host="smtp.office365.com",
        authentication={
            "method": "oauth2",
            "provider": "microsoft",
            "grant": "client_credentials",
            "username": "sender@contoso.com",
            "directory_tenant_id": "contoso.onmicrosoft.com",
            "client_id": "00000000-1111-2222-3333-444444444444",
            "client_secret": CLIENT_SECRET,
        },
    )
    mtls = password_server(
        "mtls",
        tls={"verify": True, "client_certificate_pem": CERT_PEM, "client_key_pem": KEY_PEM},
    )
    mtls["authentication"]["password"] = PASSWORD
    plain = password_server("pw")
    plain["authentication"]["password"] = PASSWORD
    responses = []
    for body in (plain, oauth, mtls):
        r = api.request("POST", BASE, admin, json=body)
        assert r.status_code == 201, r.text
        responses.append(r)
    # A rejected request that carries secrets must not echo them back.
    bad = {**plain, "name": "bad", "port": 0}
    responses.append(api.request("POST", BASE, admin, json=bad))
    assert responses[-1].status_code == 422
    wrong_type = {**oauth, "name": "bad2"}
    wrong_type["authentication"] = {**oauth["authentication"], "client_id": [CLIENT_SECRET]}
    responses.append(api.request("POST", BASE, admin, json=wrong_type))
    assert responses[-1].status_code == 422
    current = api.request("GET", f"{BASE}/pw", admin).json()
    current["authentication"]["password"] = NEW_PASSWORD
    responses.append(api.request("PUT", f"{BASE}/pw", admin, json=current))
    assert responses[-1].status_code == 200, responses[-1].text
    # A PATCH that leaves the destination alone keeps the stored secrets (one that moves
    # the destination drops them: test_secret_binding.py).
    responses.append(
        api.request("PATCH", f"{BASE}/mtls", admin, json={"helo_name": "mtls.example.org"})
    )
    assert responses[-1].status_code == 200, responses[-1].text
    for path in (BASE, f"{BASE}/pw", f"{BASE}/o365", f"{BASE}/mtls"):
        responses.append(api.request("GET", path, admin))
    responses.append(api.request("GET", "/api/v1/tenants/home/export", admin))
    responses.append(
        api.request(
            "GET",
            "/api/v1/tenants/home/export",
            admin,
            headers={"X-Export-Passphrase": "a long export passphrase"},
        )
    )
    responses.append(api.request("GET", "/api/v1/tenants/home/audit", admin))
    return responses


def test_secrets_never_leave_in_responses_logs_or_database(
    api: Api, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = api.admin_token()
    responses = create_configs(api, admin)
    for r in responses:
        assert not leaked(r.content), (r.request.url, leaked(r.content))
        assert not leaked(str(r.headers))
    views = {v["name"]: v for v in responses[-4 - 3].json()["items"]}
    assert views["pw"]["authentication"]["password_set"] is True
    assert views["o365"]["authentication"]["client_secret_set"] is True
    assert views["mtls"]["tls"]["client_key_set"] is True

    # Stored (so the searches below are not vacuous), but only as ciphertext.
    c = api.container
    with c.session() as db:
        home = db.execute(text("SELECT id FROM tenants WHERE name = 'home'")).scalar_one()
        got = {name: c.servers.secrets_of(c.servers.get(db, home, name)) for name in views}
    assert got["pw"].password == NEW_PASSWORD
    assert got["o365"].client_secret == CLIENT_SECRET
    assert got["mtls"].client_key_pem == KEY_PEM.strip() and got["mtls"].password == PASSWORD

    logged = "\n".join(
        f"{rec.getMessage()} {rec.exc_text or ''} {rec.args!r}" for rec in caplog.records
    )
    assert not leaked(logged)

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        files = sorted(Path(url.database).parent.glob(Path(url.database).name + "*"))
        assert any(f.name.endswith("-wal") for f in files), files
        for f in files:  # the main file and the WAL as they are while mailgate runs
            assert not leaked(f.read_bytes()), f
        c.engine.dispose()  # checkpoint the WAL into the main file and look again
        assert not leaked(Path(url.database).read_bytes())
    else:
        with c.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                rows = conn.execute(text(f'SELECT t::text FROM "{table.name}" t')).scalars()
                dump = "\n".join(rows)
                assert not leaked(dump), table.name
                if table.name == "email_servers":
                    assert "v1." in dump  # the ciphertexts are there
