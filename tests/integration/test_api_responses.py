"""The response models (``mailgate.schemas.out``): the JSON is exactly the services' views, the
OpenAPI document describes every answer, and no stored secret can get out through them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from tests.conftest import Api, password_server

from mailgate.adapters.db.tables import ApiKey, EmailServer, Tenant, User
from mailgate.adapters.secrets import SecretBox, generate_key
from mailgate.services.tenants import tenant_view

SERVERS = "/api/v1/tenants/home/email-servers"
SYSTEM = "/api/v1/system/email-server"
OAUTH2 = {
    "method": "oauth2",
    "grant": "authorization_code",
    "username": "mailbox@example.com",
    "client_id": "client-1",
    "client_secret": "client-secret-1",
}
# The stored secrets and the columns that hold them or stand for them.
SECRET_NAMES = {
    "password",
    "client_secret",
    "client_key_pem",
    "password_hash",
    "token_hash",
    "secrets_enc",
    "tokens_enc",
    "access_token",
    "refresh_token",
}


def canonical(value: Any) -> str:
    """JSON text that tells 15 from 15.0 and null from absent, whatever the key order."""
    return json.dumps(value, sort_keys=True)


def servers_of_every_kind(api: Api, admin: str) -> None:
    bodies = [
        password_server(),
        {"name": "relay", "host": "10.0.0.1", "helo_name": "me.example.com", "port": 25},
        {
            "name": "o365",
            "host": "smtp.office365.com",
            "authentication": {**OAUTH2, "provider": "microsoft", "directory_tenant_id": "org"},
        },
        {
            "name": "gmail",
            "host": "smtp.gmail.com",
            "authentication": {**OAUTH2, "provider": "google"},
        },
        {
            "name": "custom",
            "host": "smtp.example.com",
            "limits": {"messages_per_minute": 30},
            "authentication": {
                **OAUTH2,
                "provider": "custom",
                "grant": "client_credentials",
                "token_url": "https://login.example.com/token",
                "scope": "smtp",
            },
        },
    ]
    for body in bodies:
        r = api.request("POST", SERVERS, admin, json=body)
        assert r.status_code == 201, r.text
    r = api.request("PUT", SYSTEM, admin, json=password_server())
    assert r.status_code == 201, r.text
    with api.container.session() as db:  # an OAuth2 error, as the token keeper records it
        row = db.scalar(select(EmailServer).where(EmailServer.name == "o365"))
        assert row is not None
        row.oauth2_state = "error"
        row.oauth2_last_error = "invalid_grant: consent revoked"
        row.access_token_expires_at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def server_views(api: Api) -> dict[str, Any]:
    c = api.container
    with c.session() as db:
        rows = db.scalars(select(EmailServer).order_by(EmailServer.id))
        return {row.name: c.servers.view(row) for row in rows}


def test_e_mail_server_answers_are_the_views_unchanged(api: Api) -> None:
    """Absent members stay absent (per-method authentication members, name on the system
    server, secrets_error, oauth2_status), nulls stay null, floats stay floats."""
    admin = api.admin_token()
    servers_of_every_kind(api, admin)

    def answers_are_views() -> dict[str, Any]:
        views = server_views(api)
        listed = api.request("GET", SERVERS, admin).json()["items"]
        assert canonical(listed) == canonical([v for n, v in views.items() if n != "SYSTEM"])
        for name in ("DEFAULT", "relay", "o365", "gmail", "custom"):
            one = api.request("GET", f"{SERVERS}/{name}", admin).json()
            assert canonical(one) == canonical(views[name])
        assert canonical(api.request("GET", SYSTEM, admin).json()) == canonical(views["SYSTEM"])
        return views

    views = answers_are_views()
    assert "name" not in views["SYSTEM"] and "oauth2_status" in views["o365"]
    assert "password_set" not in views["o365"]["authentication"]
    api.container.servers.box = SecretBox.from_spec(generate_key())  # the old key is gone
    assert "secrets_error" in answers_are_views()["DEFAULT"]


def test_identity_answers_are_the_views_unchanged(api: Api) -> None:
    admin = api.admin_token()
    c = api.container
    api.make_user(admin, "bob", {"home": "admin"})
    created = api.request("POST", "/api/v1/tenants/home/api-keys", admin, json={"name": "erp"})
    assert created.status_code == 201
    with c.session() as db:
        users = [
            c.identity.user_view(db, u) for u in db.scalars(select(User).order_by(User.username))
        ]
        tenants = [tenant_view(t) for t in db.scalars(select(Tenant).order_by(Tenant.name))]
        [key] = [c.identity.api_key_view(k) for k in db.scalars(select(ApiKey))]
    assert canonical(api.request("GET", "/api/v1/users", admin).json()["items"]) == canonical(users)
    assert canonical(api.request("GET", "/api/v1/tenants", admin).json()["items"]) == canonical(
        tenants
    )
    keys = api.request("GET", "/api/v1/tenants/home/api-keys", admin).json()["items"]
    assert canonical(keys) == canonical([key])
    assert canonical(created.json()) == canonical({**key, "token": created.json()["token"]})


def test_a_secret_in_a_view_does_not_reach_the_client(api: Api, monkeypatch: Any) -> None:
    admin = api.admin_token()
    api.request("POST", SERVERS, admin, json=password_server())
    servers = api.container.servers
    view = servers.view

    def leaky(row: EmailServer) -> dict[str, Any]:
        out = view(row)
        out["authentication"]["password"] = "S3cret-pw!"
        out["tls"]["client_key_pem"] = "-----BEGIN PRIVATE KEY-----"
        out["password"] = "S3cret-pw!"
        return out

    monkeypatch.setattr(servers, "view", leaky)
    r = api.request("GET", f"{SERVERS}/DEFAULT", admin)
    assert r.status_code == 200
    assert "S3cret-pw!" not in r.text and "PRIVATE KEY" not in r.text


def response_schemas(doc: dict[str, Any]) -> dict[str, list[Any]]:
    """Operation -> the schemas of its JSON success answers (not the raw message, the
    metrics text)."""
    found: dict[str, list[Any]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for code, answer in op["responses"].items():
                json_answer = answer.get("content", {}).get("application/json")
                if code.startswith("2") and json_answer is not None:
                    found.setdefault(f"{method.upper()} {path}", []).append(json_answer["schema"])
    return found


def property_names(doc: dict[str, Any], schema: Any, seen: set[str]) -> set[str]:
    """Every property name reachable from ``schema`` (following $refs)."""
    names: set[str] = set()
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            names |= property_names(doc, doc["components"]["schemas"][ref.split("/")[-1]], seen)
        names |= set(schema.get("properties", {}))
        for value in schema.values():
            names |= property_names(doc, value, seen)
    elif isinstance(schema, list):
        for value in schema:
            names |= property_names(doc, value, seen)
    return names


def test_the_openapi_document_describes_every_answer_and_no_secret(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    answers = response_schemas(doc)
    undescribed = [
        op
        for op, schemas in answers.items()
        if not all(s and ("$ref" in s or "oneOf" in s) for s in schemas)
    ]
    assert not undescribed
    assert len(answers) > 30
    every_schema = [s for schemas in answers.values() for s in schemas]
    names = property_names(doc, every_schema, set())
    assert {"password_set", "client_secret_set", "client_key_set", "token"} <= names
    assert not names & SECRET_NAMES
