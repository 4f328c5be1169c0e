"""Export and import of a tenant's configuration through the API, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import trustme
from sqlalchemy import select
from tests.conftest import Api, password_server

from mailgate.adapters.db.tables import EmailServer, RemoteClient, Tenant
from mailgate.bootstrap import Container

PASSPHRASE = "correct horse battery staple"
PASSWORD = "S3cret-pw!"
CLIENT_SECRET = "oauth-client-secret-value-42"
REFRESH_TOKEN = "refresh-token-value-0123456789"

# Other changes are in the audit log too; these tests look at exports and imports.
HOME_EXPORTS = "/api/v1/tenants/home/audit?action=tenant.export"
ACME_IMPORTS = "/api/v1/tenants/acme/audit?action=tenant.import"


def export_url(tenant: str = "home", **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"/api/v1/tenants/{tenant}/export" + (f"?{query}" if query else "")


def import_url(tenant: str, dry_run: bool = False) -> str:
    return f"/api/v1/tenants/{tenant}/import?dry_run={'true' if dry_run else 'false'}"


def oauth_server(name: str = "o365") -> dict[str, Any]:
    return {
        "name": name,
        "host": "smtp.office365.com",
        "authentication": {
            "method": "oauth2",
            "provider": "microsoft",
            "grant": "authorization_code",
            "username": "sender@contoso.com",
            "directory_tenant_id": "contoso.onmicrosoft.com",
            "client_id": "11111111-2222-3333-4444-555555555555",
            "client_secret": CLIENT_SECRET,
        },
        "limits": {"max_connections": 3, "messages_per_minute": 30, "max_message_bytes": None},
    }


@pytest.fixture(scope="module")
def client_cert() -> tuple[str, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("client.example.com")
    # The API strips surrounding white space from every string.
    return (
        leaf.cert_chain_pems[0].bytes().decode().strip(),
        leaf.private_key_pem.bytes().decode().strip(),
    )


def seed(api: Api, admin: str, client_cert: tuple[str, str]) -> None:
    """home: a password server (default, mutual TLS) and an OAuth2 server with tokens."""
    cert, key = client_cert
    body = password_server(
        tls={"verify": True, "client_certificate_pem": cert, "client_key_pem": key},
        timeouts={"connect_s": 7, "command_s": 30},
        message_defaults={
            "from_address": "noreply@example.com",
            "from_name": "Example",
            "cc": ["audit@example.com"],
            "headers": {"X-Source": "mailgate"},
        },
    )
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=body)
    assert r.status_code == 201, r.text
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=oauth_server())
    assert r.status_code == 201, r.text
    c = api.container
    with c.session() as db:
        row = c.servers.get(db, 1, "o365")
        c.servers.store_tokens(row, {"refresh_token": REFRESH_TOKEN, "access_token": "at-1"})
        row.oauth2_state = "authorized"
        row.access_token_expires_at = datetime(2030, 1, 1, tzinfo=UTC)


def snapshot(c: Container) -> dict[str, Any]:
    """Everything an import may touch, decrypted, to compare before and after."""
    with c.session() as db:
        servers = {}
        for row in db.scalars(select(EmailServer).order_by(EmailServer.id)):
            servers[(row.tenant_id, row.name)] = (
                row.is_default,
                row.config,
                c.servers.secrets_of(row),
                c.servers.tokens_of(row),
                row.oauth2_state,
                row.updated_at,
            )
        clients = [(r.tenant_id, r.name, r.token_hash) for r in db.scalars(select(RemoteClient))]
        return {"servers": servers, "clients": clients}


def add_tenant(api: Api, admin: str, name: str = "acme") -> int:
    api.make_tenant(admin, name)
    with api.container.session() as db:
        tenant_id = db.scalar(select(Tenant.id).where(Tenant.name == name))
    assert tenant_id is not None
    return tenant_id


def names(items: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(i["resource"], i["name"]) for i in items]


def test_export_without_passphrase_leaves_secrets_out_and_import_warns(
    api: Api, client_cert: tuple[str, str]
) -> None:
    admin = api.admin_token()
    seed(api, admin, client_cert)
    r = api.request("GET", export_url(), admin)
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].startswith('attachment; filename="mailgate-home-')
    assert r.headers["cache-control"] == "no-store"
    raw = r.content
    for secret in (PASSWORD, CLIENT_SECRET, REFRESH_TOKEN, client_cert[1].splitlines()[1]):
        assert secret.encode() not in raw
    doc = r.json()
    assert doc["format"] == "mailgate-tenant-export" and doc["format_version"] == 1
    assert doc["source"]["tenant"] == "home" and doc["source"]["installation_id"]
    assert doc["secrets"] is None
    servers = {s["name"]: s for s in doc["email_servers"]}
    assert servers["DEFAULT"]["is_default"] is True and servers["o365"]["is_default"] is False
    # Every public field travels, as the API shows it.
    shown = api.request("GET", "/api/v1/tenants/home/email-servers/DEFAULT", admin).json()
    assert servers["DEFAULT"]["tls"]["client_certificate_pem"] == client_cert[0]
    assert servers["DEFAULT"]["message_defaults"] == shown["message_defaults"]
    assert servers["DEFAULT"]["timeouts"] == shown["timeouts"]
    assert shown["timeouts"] == {"connect_s": 7, "command_s": 30, "data_done_s": 600.0}
    assert servers["o365"]["limits"]["messages_per_minute"] == 30
    assert servers["o365"]["authentication"]["redirect_uri"] == (
        "http://testserver/settings/oauth2code"
    )
    assert {(n["name"], n["field"]) for n in doc["not_exported"]} == {
        ("DEFAULT", "authentication.password"),
        ("DEFAULT", "tls.client_key_pem"),
        ("o365", "authentication.client_secret"),
        ("o365", "oauth2_tokens"),
    }

    acme = add_tenant(api, admin)
    r = api.request("POST", import_url("acme"), admin, json=doc)
    assert r.status_code == 200, r.text
    report = r.json()
    assert names(report["created"]) == [("email-servers", "DEFAULT"), ("email-servers", "o365")]
    assert report["overwritten"] == [] and report["unchanged"] == []
    warned = {(w["name"], w.get("field")) for w in report["warnings"]}
    assert ("DEFAULT", "authentication.password") in warned
    assert ("DEFAULT", "tls.client_key_pem") in warned
    assert ("o365", "authentication.client_secret") in warned
    assert ("o365", "oauth2_status") in warned  # no refresh token: authorize again
    got = api.request("GET", "/api/v1/tenants/acme/email-servers/DEFAULT", admin).json()
    assert got["authentication"]["password_set"] is False
    assert got["is_default"] is True and got["host"] == "smtp.example.com"
    with api.container.session() as db:
        row = api.container.servers.get(db, acme, "o365")
        assert row.oauth2_state == "not_authorized" and row.tokens_enc is None

    audit = api.request("GET", "/api/v1/tenants/home/audit?action=tenant.export", admin).json()
    (entry,) = audit["items"]
    assert entry["actor"] == "admin" and entry["detail"]["with_secrets"] is False
    imported = api.request("GET", ACME_IMPORTS, admin).json()["items"]
    assert [e["action"] for e in imported] == ["tenant.import"]


def test_passphrase_export_restores_every_secret(api: Api, client_cert: tuple[str, str]) -> None:
    admin = api.admin_token()
    seed(api, admin, client_cert)
    r = api.request("GET", export_url(), admin, headers={"X-Export-Passphrase": PASSPHRASE})
    assert r.status_code == 200, r.text
    raw = r.content
    for secret in (PASSWORD, CLIENT_SECRET, REFRESH_TOKEN, client_cert[1].splitlines()[1]):
        assert secret.encode() not in raw
        assert base64.b64encode(secret.encode())[:12] not in raw
    doc = r.json()
    assert doc["secrets"]["kdf"]["name"] == "scrypt" and doc["secrets"]["cipher"] == "AES-256-GCM"
    assert doc["not_exported"] == []

    acme = add_tenant(api, admin)
    r = api.request(
        "POST", import_url("acme"), admin, json=doc, headers={"X-Export-Passphrase": PASSPHRASE}
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert len(report["created"]) == 2
    assert not [w for w in report["warnings"] if "field" in w and "secret" in w["field"]]
    assert any("two installations" in w["message"] for w in report["warnings"])
    c = api.container
    with c.session() as db:
        default = c.servers.resolve(c.servers.get(db, acme, "DEFAULT"))
        assert default.secrets.password == PASSWORD
        assert default.secrets.client_key_pem == client_cert[1]
        o365 = c.servers.get(db, acme, "o365")
        assert c.servers.secrets_of(o365).client_secret == CLIENT_SECRET
        assert c.servers.tokens_of(o365)["refresh_token"] == REFRESH_TOKEN
        assert o365.oauth2_state == "authorized"
        assert o365.access_token_expires_at == datetime(2030, 1, 1, tzinfo=UTC)

    audit = api.request("GET", "/api/v1/tenants/home/audit", admin).json()["items"]
    assert audit[0]["detail"]["with_secrets"] is True

    # The same document again: nothing to do.
    r = api.request(
        "POST", import_url("acme"), admin, json=doc, headers={"X-Export-Passphrase": PASSPHRASE}
    )
    assert names(r.json()["unchanged"]) == [("email-servers", "DEFAULT"), ("email-servers", "o365")]


def test_import_overwrites_same_name_and_leaves_others_alone(api: Api) -> None:
    admin = api.admin_token()
    base = "/api/v1/tenants/home/email-servers"
    api.request("POST", base, admin, json=password_server("DEFAULT", host="export.example.com"))
    api.request("POST", base, admin, json=password_server("fresh", host="fresh.example.com"))
    doc = api.request("GET", export_url(), admin).json()

    add_tenant(api, admin)
    target = "/api/v1/tenants/acme/email-servers"
    api.request("POST", target, admin, json=password_server("DEFAULT", host="old.example.com"))
    api.request(
        "POST", target, admin, json=password_server("keep", host="keep.example.com", port=2525)
    )
    keep_before = api.request("GET", f"{target}/keep", admin).json()

    r = api.request("POST", import_url("acme"), admin, json=doc)
    assert r.status_code == 200, r.text
    report = r.json()
    assert names(report["overwritten"]) == [("email-servers", "DEFAULT")]
    assert names(report["created"]) == [("email-servers", "fresh")]
    overwritten = api.request("GET", f"{target}/DEFAULT", admin).json()
    assert overwritten["host"] == "export.example.com"
    # No secret in the document, and the configuration now points at another host: the
    # stored password stays bound to the old one (dropped), and the report says so.
    assert overwritten["authentication"]["password_set"] is False
    assert any(w["name"] == "DEFAULT" and "is not kept" in w["message"] for w in report["warnings"])
    assert api.request("GET", f"{target}/keep", admin).json() == keep_before
    listed = api.request("GET", target, admin).json()["items"]
    assert [(s["name"], s["is_default"]) for s in listed] == [
        ("DEFAULT", True),
        ("keep", False),
        ("fresh", False),
    ]


def test_default_flag_moves_with_the_document(api: Api) -> None:
    admin = api.admin_token()
    base = "/api/v1/tenants/home/email-servers"
    api.request("POST", base, admin, json=password_server("main"))
    doc = api.request("GET", export_url(), admin).json()
    add_tenant(api, admin)
    target = "/api/v1/tenants/acme/email-servers"
    api.request("POST", target, admin, json=password_server("legacy"))
    assert api.request("POST", import_url("acme"), admin, json=doc).status_code == 200
    listed = api.request("GET", target, admin).json()["items"]
    assert [(s["name"], s["is_default"]) for s in listed] == [("main", True), ("legacy", False)]


def test_dry_run_reports_the_same_and_changes_nothing(
    api: Api, client_cert: tuple[str, str]
) -> None:
    admin = api.admin_token()
    seed(api, admin, client_cert)
    headers = {"X-Export-Passphrase": PASSPHRASE}
    doc = api.request("GET", export_url(), admin, headers=headers).json()
    add_tenant(api, admin)
    api.request(
        "POST",
        "/api/v1/tenants/acme/email-servers",
        admin,
        json=password_server("DEFAULT", host="old.example.com"),
    )
    before = snapshot(api.container)
    dry = api.request("POST", import_url("acme", dry_run=True), admin, json=doc, headers=headers)
    assert dry.status_code == 200, dry.text
    assert snapshot(api.container) == before
    # (other changes are audited too: look at the imports' entries)
    assert api.request("GET", ACME_IMPORTS, admin).json()["items"] == []
    real = api.request("POST", import_url("acme"), admin, json=doc, headers=headers)
    assert real.status_code == 200
    assert dry.json() == {**real.json(), "dry_run": True}
    assert names(real.json()["overwritten"]) == [("email-servers", "DEFAULT")]
    assert snapshot(api.container) != before


def flip_ciphertext(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    sealed = bytearray(base64.b64decode(out["secrets"]["ciphertext"]))
    sealed[5] ^= 0x01
    out["secrets"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    return out


def edit_host(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["email_servers"][0]["host"] = "evil.example.net"
    return out


def test_refused_documents_change_nothing(api: Api, client_cert: tuple[str, str]) -> None:
    admin = api.admin_token()
    seed(api, admin, client_cert)
    good = {"X-Export-Passphrase": PASSPHRASE}
    doc = api.request("GET", export_url(), admin, headers=good).json()
    acme = add_tenant(api, admin)
    api.request(
        "POST",
        "/api/v1/tenants/acme/email-servers",
        admin,
        json=password_server("DEFAULT", host="old.example.com"),
    )
    before = snapshot(api.container)
    text = json.dumps(doc)
    cases: list[tuple[str, Any, dict[str, str], int, str]] = [
        ("wrong passphrase", doc, {"X-Export-Passphrase": "not the passphrase"}, 400, "passphrase"),
        ("no passphrase", doc, {}, 400, "X-Export-Passphrase"),
        ("flipped ciphertext", flip_ciphertext(doc), good, 400, "changed after"),
        ("edited field", edit_host(doc), good, 400, "changed after"),
        ("future version", {**doc, "format_version": 2}, good, 422, "newer mailgate"),
        ("unknown version", {**doc, "format_version": 0}, good, 422, "unknown format"),
        ("not an export", {"hello": "world"}, good, 422, "not a mailgate tenant export"),
    ]
    for label, body, headers, status, needle in cases:
        r = api.request("POST", import_url("acme"), admin, json=body, headers=headers)
        assert r.status_code == status, (label, r.text)
        assert r.headers["content-type"] == "application/problem+json", label
        assert needle in r.text, (label, r.text)
        assert PASSWORD not in r.text and CLIENT_SECRET not in r.text
    r = api.request(
        "POST",
        import_url("acme"),
        admin,
        content=text[: len(text) // 2].encode(),
        headers={**good, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["title"] == "Malformed JSON"
    assert snapshot(api.container) == before
    # (other changes are audited too: look at the imports' entries)
    assert api.request("GET", ACME_IMPORTS, admin).json()["items"] == []
    assert acme


def test_invalid_entries_are_named_and_nothing_is_written(api: Api) -> None:
    admin = api.admin_token()
    api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    doc = api.request("GET", export_url(), admin).json()
    good_entry = doc["email_servers"][0]
    bad = copy.deepcopy(doc)
    bad["email_servers"] = [
        {**good_entry, "name": "fine"},
        {**good_entry, "name": "badport", "port": 0, "is_default": False},
        {
            **good_entry,
            "name": "clear",
            "is_default": False,
            "authentication": {**good_entry["authentication"], "password": PASSWORD},
        },
        {**good_entry, "name": "fine", "is_default": False},
    ]
    add_tenant(api, admin)
    before = snapshot(api.container)
    r = api.request("POST", import_url("acme"), admin, json=bad)
    assert r.status_code == 422, r.text
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {
        "email_servers.1.port",
        "email_servers.2.authentication.password",
        "email_servers.3.name",
    }
    assert PASSWORD not in r.text
    assert snapshot(api.container) == before

    oauth = copy.deepcopy(doc)
    oauth["email_servers"][0]["authentication"] = {"method": "oauth2", "provider": "google"}
    r = api.request("POST", import_url("acme"), admin, json=oauth)
    assert r.status_code == 422
    assert "email_servers.0.authentication.client_id" in {e["field"] for e in r.json()["errors"]}

    remote = copy.deepcopy(doc)
    remote["email_servers"][0]["remote_output"] = {"enabled": True, "remote_client": "plant-1"}
    r = api.request("POST", import_url("acme"), admin, json=remote)
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"email_servers.0.remote_output.enabled"}
    assert snapshot(api.container) == before

    r = api.request("GET", export_url(resources="email-servers,users"), admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "resources"
    r = api.request("GET", export_url(), admin, headers={"X-Export-Passphrase": "short"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "X-Export-Passphrase"


def test_remote_clients_travel_by_name_without_tokens(api: Api) -> None:
    admin = api.admin_token()
    c = api.container
    r = api.request("PUT", "/api/v1/system/settings", admin, json={"allow_remote_clients": True})
    assert r.status_code == 200, r.text
    r = api.request("POST", "/api/v1/tenants/home/remote-clients", admin, json={"name": "plant-1"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    with c.session() as db:
        token_hash = db.scalar(select(RemoteClient.token_hash))
    assert token_hash
    api.request(
        "POST",
        "/api/v1/tenants/home/email-servers",
        admin,
        json=password_server(remote_output={"enabled": True, "remote_client": "plant-1"}),
    )
    r = api.request("GET", export_url(), admin, headers={"X-Export-Passphrase": PASSPHRASE})
    doc = r.json()
    assert doc["remote_clients"] == [{"name": "plant-1"}]
    assert token.encode() not in r.content and token_hash.encode() not in r.content
    assert [n["field"] for n in doc["not_exported"]] == ["token"]
    only_servers = api.request("GET", export_url(resources="email-servers"), admin).json()
    assert "remote_clients" not in only_servers and only_servers["resources"] == ["email-servers"]

    acme = add_tenant(api, admin)
    r = api.request(
        "POST", import_url("acme"), admin, json=doc, headers={"X-Export-Passphrase": PASSPHRASE}
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert ("remote-clients", "plant-1") in names(report["created"])
    assert any(
        w["resource"] == "remote-clients" and "new token" in w["message"]
        for w in report["warnings"]
    )
    with c.session() as db:
        made = db.scalar(
            select(RemoteClient).where(
                RemoteClient.tenant_id == acme, RemoteClient.name == "plant-1"
            )
        )
        assert made is not None and made.token_hash != token_hash
        # The old client's token does not open the imported one; no token does.
        assert c.remote_clients.authenticate(db, token).tenant_id == 1
    served = api.request("GET", "/api/v1/tenants/acme/email-servers/DEFAULT", admin).json()
    assert served["remote_output"] == {"enabled": True, "remote_client": "plant-1"}


def test_only_tenant_admins_and_system_admins(api: Api) -> None:
    admin = api.admin_token()
    api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    add_tenant(api, admin)
    home_admin = api.make_user(admin, "homeadmin", {"home": "admin"})
    home_user = api.make_user(admin, "homeuser", {"home": "user"})
    home_reader = api.make_user(admin, "homereader", {"home": "read_only"})
    acme_admin = api.make_user(admin, "acmeadmin", {"acme": "admin"})
    doc = api.request("GET", export_url(), admin).json()

    assert api.request("GET", export_url(), home_admin).status_code == 200
    for token in (home_user, home_reader):
        assert api.request("GET", export_url(), token).status_code == 403
        assert api.request("POST", import_url("home"), token, json=doc).status_code == 403
        assert api.request("GET", "/api/v1/tenants/home/audit", token).status_code == 403
    # Another tenant's admin: as if the tenant did not exist.
    assert api.request("GET", export_url(), acme_admin).status_code == 404
    assert api.request("POST", import_url("home"), acme_admin, json=doc).status_code == 404
    assert api.request("GET", "/api/v1/tenants/home/audit", acme_admin).status_code == 404
    api.client.cookies.clear()  # the test client keeps the last login's session cookie
    assert api.request("GET", export_url()).status_code == 401

    items = api.request("GET", HOME_EXPORTS, home_admin).json()["items"]
    assert [(e["actor"], e["action"]) for e in items] == [
        ("homeadmin", "tenant.export"),
        ("admin", "tenant.export"),
    ]
    assert api.request("GET", ACME_IMPORTS, acme_admin).json()["items"] == []
    page = api.request("GET", HOME_EXPORTS + "&limit=1", admin).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = api.request("GET", HOME_EXPORTS + f"&limit=1&cursor={page['next_cursor']}", admin).json()
    assert rest["items"][0]["actor"] == "admin" and rest["next_cursor"] is None


def test_non_ascii_passphrase_over_http(api: Api) -> None:
    admin = api.admin_token()
    api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    phrase = "blåbærgrød på søndag"
    raw = {"X-Export-Passphrase": phrase.encode()}  # UTF-8 octets, as curl sends them
    doc = api.request("GET", export_url(), admin, headers=raw).json()
    add_tenant(api, admin)
    r = api.request("POST", import_url("acme", dry_run=True), admin, json=doc, headers=raw)
    assert r.status_code == 200, r.text
    # The same passphrase typed into the CLI opens it (the service gets the decoded text).
    with api.container.session() as db:
        tenant = db.scalar(select(Tenant).where(Tenant.name == "acme"))
        assert tenant is not None
        report = api.container.transfer.import_(
            db, tenant, doc, passphrase=phrase, dry_run=True, actor="test"
        )
    assert report["created"] == [{"resource": "email-servers", "name": "DEFAULT"}]


def test_audit_cursor_must_be_one_of_ours(api: Api) -> None:
    admin = api.admin_token()
    for cursor in ("9" * 30, "-1", "abc", "١٢"):
        r = api.request("GET", f"/api/v1/tenants/home/audit?cursor={cursor}", admin)
        assert r.status_code == 422, (cursor, r.text)
        assert r.json()["errors"][0]["field"] == "cursor"


def test_answers_are_the_services_unchanged(api: Api, client_cert: tuple[str, str]) -> None:
    """The response models (schemas/out/transfer.py) pass the services' JSON through: the same
    members, absent ones absent, nulls null."""
    admin = api.admin_token()
    seed(api, admin, client_cert)
    c = api.container

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    docs = {}
    for wanted in ("email-servers,remote-clients", "remote-clients"):
        answer = api.request("GET", export_url(resources=wanted), admin).json()
        with c.session() as db:
            home = db.scalar(select(Tenant).where(Tenant.name == "home"))
            assert home is not None
            made = c.transfer.export(
                db, home, resources=answer["resources"], passphrase=None, actor="admin"
            )
        assert same({**answer, "exported_at": None}, {**made, "exported_at": None})
        docs[wanted] = answer
    assert "email_servers" not in docs["remote-clients"]

    add_tenant(api, admin)
    doc = docs["email-servers,remote-clients"]
    # A passphrase for a document without secrets: a warning without a field.
    headers = {"X-Export-Passphrase": PASSPHRASE}
    r = api.request("POST", import_url("acme", dry_run=True), admin, json=doc, headers=headers)
    assert r.status_code == 200, r.text
    with c.session() as db:
        acme = db.scalar(select(Tenant).where(Tenant.name == "acme"))
        assert acme is not None
        report = c.transfer.import_(
            db, acme, doc, passphrase=PASSPHRASE, dry_run=True, actor="admin"
        )
    assert any("field" not in w for w in report["warnings"])
    assert same(r.json(), report)
