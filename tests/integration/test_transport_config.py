"""The transport of a configuration (README "Delivery transports"): saved and shown, validated
per provider, the OAuth2 scope it asks for, tokens forgotten when it changes, carried by
export and import."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.oauth_env import BASE, MAILBOX, Env, make_env, oauth_config
from tests.oauth_server import RunningAuthServer, query_of


@pytest.fixture
def env(tmp_path: Path, database_url: str, oauth_server: RunningAuthServer) -> Iterator[Env]:
    yield from make_env(tmp_path, database_url, oauth_server)


@pytest.fixture
def lite(tmp_path: Path, sqlite_url: str, oauth_server: RunningAuthServer) -> Iterator[Env]:
    yield from make_env(tmp_path, sqlite_url, oauth_server)


def graph_config(name: str = "GRAPH", **auth: Any) -> dict[str, Any]:
    body = oauth_config(name, **auth)
    del body["host"], body["port"]
    return {**body, "transport": "microsoft_graph"}


def gmail_config(name: str = "GMAIL", **auth: Any) -> dict[str, Any]:
    body = graph_config(name, provider="google", directory_tenant_id=None, **auth)
    body["authentication"] = {k: v for k, v in body["authentication"].items() if v is not None}
    return {**body, "transport": "gmail_api"}


def create(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    r = env.api.request("POST", BASE, env.admin, json=body)
    assert r.status_code == 201, r.text
    view: dict[str, Any] = r.json()
    return view


def view(env: Env, name: str) -> dict[str, Any]:
    r = env.api.request("GET", f"{BASE}/{name}", env.admin)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_api_transports_are_saved_without_smtp_settings(env: Env) -> None:
    graph = create(env, graph_config())
    assert graph["transport"] == "microsoft_graph"
    assert graph["host"] is None
    assert graph["oauth2_status"]["state"] == "not_authorized"
    # A form that clears the SMTP host sends an empty string: no host, not an error.
    gmail = create(env, {**gmail_config(), "host": ""})
    assert (gmail["transport"], gmail["host"]) == ("gmail_api", None)
    assert view(env, "DEFAULT")["transport"] == "smtp"  # the default
    listed = env.api.request("GET", BASE, env.admin).json()["items"]
    assert {s["name"]: s["transport"] for s in listed} == {
        "DEFAULT": "smtp",
        "GRAPH": "microsoft_graph",
        "GMAIL": "gmail_api",
    }
    # SMTP settings given anyway are kept (switching back needs them), and ignored.
    r = env.api.request(
        "PATCH", f"{BASE}/GRAPH", env.admin, json={"host": "smtp.office365.com", "port": 587}
    )
    assert r.status_code == 200, r.text
    assert r.json()["transport"] == "microsoft_graph"
    # Back to SMTP: now the host is required again.
    r = env.api.request("PATCH", f"{BASE}/GMAIL", env.admin, json={"transport": "smtp"})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["host"]


def test_the_scope_follows_the_transport(lite: Env) -> None:
    create(lite, graph_config())
    create(lite, gmail_config())
    scopes = {
        name: query_of(lite.authorize_url(name))["scope"] for name in ("DEFAULT", "GRAPH", "GMAIL")
    }
    assert scopes == {
        "DEFAULT": "offline_access https://outlook.office.com/SMTP.Send",
        "GRAPH": "offline_access https://graph.microsoft.com/Mail.Send",
        "GMAIL": "https://www.googleapis.com/auth/gmail.send",
    }
    # App-only Graph asks for the app's granted permissions on the Graph resource.
    create(lite, graph_config("APP", grant="client_credentials"))
    r = lite.api.request("POST", f"{BASE}/APP/oauth2/refresh", lite.admin)
    assert r.status_code == 200, r.text
    [request] = [q for q in lite.oauth.server.requests if q.grant_type == "client_credentials"]
    assert request.form["scope"] == "https://graph.microsoft.com/.default"
    assert request.path.endswith("/contoso-tenant/oauth2/v2.0/token")


def test_changing_the_transport_forgets_the_tokens(env: Env) -> None:
    env.authorize("DEFAULT")
    assert env.status()["state"] == "authorized"
    r = env.api.request(
        "PATCH", f"{BASE}/DEFAULT", env.admin, json={"transport": "microsoft_graph"}
    )
    assert r.status_code == 200, r.text
    # An SMTP token is useless for Graph (another audience): sign in again.
    assert r.json()["oauth2_status"]["state"] == "not_authorized"
    assert env.tokens() == {}
    env.authorize("DEFAULT")
    assert env.status()["state"] == "authorized"
    r = env.api.request(
        "PATCH", f"{BASE}/DEFAULT", env.admin, json={"limits": {"max_connections": 4}}
    )
    assert r.status_code == 200, r.text
    assert env.status()["state"] == "authorized"  # other edits keep them


def test_export_and_import_carry_the_transport(lite: Env) -> None:
    create(lite, graph_config())
    create(lite, gmail_config())
    r = lite.api.request("GET", "/api/v1/tenants/home/export", lite.admin)
    assert r.status_code == 200, r.text
    document = r.json()
    exported = {s["name"]: s["transport"] for s in document["email_servers"]}
    assert exported == {"DEFAULT": "smtp", "GRAPH": "microsoft_graph", "GMAIL": "gmail_api"}
    lite.api.make_tenant(lite.admin, "acme")
    r = lite.api.request(
        "POST", "/api/v1/tenants/acme/import?dry_run=false", lite.admin, json=document
    )
    assert r.status_code == 200, r.text
    assert sorted(c["name"] for c in r.json()["created"]) == ["DEFAULT", "GMAIL", "GRAPH"]
    acme = "/api/v1/tenants/acme/email-servers"
    listed = lite.api.request("GET", acme, lite.admin).json()["items"]
    assert {s["name"]: (s["transport"], s["host"]) for s in listed} == {
        "DEFAULT": ("smtp", "smtp.example.com"),
        "GRAPH": ("microsoft_graph", None),
        "GMAIL": ("gmail_api", None),
    }
    # A document from before the transport existed imports as SMTP.
    for entry in document["email_servers"]:
        entry.pop("transport")
    document["email_servers"] = [s for s in document["email_servers"] if s["name"] == "DEFAULT"]
    lite.api.make_tenant(lite.admin, "old")
    r = lite.api.request("POST", "/api/v1/tenants/old/import", lite.admin, json=document)
    assert r.status_code == 200, r.text
    old = lite.api.request("GET", "/api/v1/tenants/old/email-servers/DEFAULT", lite.admin)
    assert old.json()["transport"] == "smtp"
    assert MAILBOX  # the mailbox the OAuth2 configurations send as
