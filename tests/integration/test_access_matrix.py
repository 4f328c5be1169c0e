"""Tenant isolation and roles, for every endpoint and every kind of credential.

The expected answer is computed from ``domain/access.py`` (ROLE_PERMS), so the table below
states only which permission an endpoint needs. When you add an endpoint, add a row to
``ENDPOINTS`` (tenant-scoped) or ``SYSTEM_ENDPOINTS`` (installation-wide, system_admin only):

- ``perm``: the permission ``tenant_for`` checks, or ``None`` for system administrators only;
- ``body``: a factory ``(world, tenant) -> body`` for a valid request body (called once per
  request, so names can be unique);
- ``fresh``: for calls that consume their target (DELETE), a factory that creates a disposable
  target as system administrator and returns the path parameters. Denied calls use the
  standing resources (and must not change them);
- ``ok``: the answer for an authorized caller (usually 2xx; a 409 is fine where the standing
  resource is in the wrong state, it still proves the caller got past authorization);
- ``not_own``: the answer for callers limited to their own messages (``web_service``), since
  the standing resources belong to the system administrator.

For each row: callers of tenant A on tenant B's resources get 404 and change nothing; inside
a tenant each role gets the success status if its role has ``perm``, else 403 and nothing
changes; system_admin may do everything; no credential is 401; a cookie session needs the
CSRF header for unsafe methods.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.conftest import Api, password_server
from tests.state import diff, snapshot

from mailgate.adapters.db.tables import WebhookEndpoint
from mailgate.domain.access import ROLE_PERMS, Perm, Role
from mailgate.entrypoints.api.deps import CSRF_HEADER, SESSION_COOKIE

TENANTS = ("alpha", "beta")
T = "/api/v1/tenants/{tenant}"
_seq = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_seq)}"


@dataclass
class World:
    api: Api
    admin: str
    standing: dict[str | None, dict[str, str]] = field(default_factory=dict)

    def call(self, method: str, path: str, token: str | None, **kw: Any) -> Any:
        return self.api.request(method, path, token, **kw)


def fresh_tenant(w: World, _tenant: str | None) -> dict[str, str]:
    name = unique("gone")
    w.api.make_tenant(w.admin, name)
    return {**w.standing["alpha"], "tenant": name}


def fresh_server(w: World, tenant: str | None) -> dict[str, str]:
    name = unique("tmp")
    r = w.call("POST", f"/api/v1/tenants/{tenant}/email-servers", w.admin, json=server(name))
    assert r.status_code == 201, r.text
    return {**w.standing[tenant], "server": name}


def fresh_key(w: World, tenant: str | None) -> dict[str, str]:
    r = w.call("POST", f"/api/v1/tenants/{tenant}/api-keys", w.admin, json={"name": unique("tmp")})
    assert r.status_code == 201, r.text
    return {**w.standing[tenant], "key": r.json()["id"]}


def fresh_remote(w: World, tenant: str | None) -> dict[str, str]:
    name = unique("plant")
    r = w.call("POST", f"/api/v1/tenants/{tenant}/remote-clients", w.admin, json={"name": name})
    assert r.status_code == 201, r.text
    return {**w.standing[tenant], "remote": name}


def webhook(w: World, tenant: str | None) -> str:
    """A webhook aimed at a loopback port: created with a public URL (the API refuses
    loopback), then moved there in the database, so a test event is refused by the sender's
    connect-time check at once, without DNS or network."""
    r = w.call(
        "POST",
        f"/api/v1/tenants/{tenant}/webhooks",
        w.admin,
        json={"url": "https://example.com/hook"},
    )
    assert r.status_code == 201, r.text
    hook: str = r.json()["id"]
    with w.api.container.session() as db:
        row = db.get(WebhookEndpoint, hook)
        assert row is not None
        row.url = "http://127.0.0.1:1/hook"
    return hook


def fresh_webhook(w: World, tenant: str | None) -> dict[str, str]:
    return {**w.standing[tenant], "webhook": webhook(w, tenant)}


def export_of(w: World, tenant: str | None) -> Any:
    r = w.call("GET", f"/api/v1/tenants/{tenant}/export", w.admin)
    assert r.status_code == 200, r.text
    return r.json()


def fresh_user(w: World, _tenant: str | None) -> dict[str, str]:
    name = unique("u")
    r = w.call("POST", "/api/v1/users", w.admin, json={"username": name, "password": "pw-12345678"})
    assert r.status_code == 201, r.text
    return {"username": name}


def server(name: str) -> dict[str, Any]:
    # Port 1 on the loopback refuses at once: a server test fails fast, with no DNS lookup.
    return password_server(name, host="127.0.0.1", port=1)


def oauth2_server(name: str) -> dict[str, Any]:
    return password_server(
        name,
        host="127.0.0.1",
        port=1,
        authentication={
            "method": "oauth2",
            "provider": "microsoft",
            "grant": "authorization_code",
            "username": "sender@contoso.com",
            "directory_tenant_id": "contoso.onmicrosoft.com",
            "client_id": "app-id",
            "client_secret": "app-secret",
        },
    )


def held_message(w: World, tenant: str | None) -> str:
    r = w.call(
        "POST",
        f"/api/v1/tenants/{tenant}/messages",
        w.admin,
        json={"to": ["someone@example.com"], "subject": "held", "text": "x", "hold": True},
    )
    assert r.status_code == 202, r.text
    message_id: str = r.json()["id"]
    return message_id


def fresh_message(w: World, tenant: str | None) -> dict[str, str]:
    return {**w.standing[tenant], "message": held_message(w, tenant)}


def fresh_system_server(w: World, _tenant: str | None) -> dict[str, str]:
    body = server("SYSTEM")
    body.pop("name")
    r = w.call("PUT", "/api/v1/system/email-server", w.admin, json=body)
    assert r.status_code in (200, 201), r.text
    return w.standing[None]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    perm: Perm | None
    ok: int = 200
    body: Callable[[World, str | None], Any] | None = None
    fresh: Callable[[World, str | None], dict[str, str]] | None = None
    not_own: int | None = None  # the answer for callers limited to their own messages

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", T, Perm.TENANT_READ),
    Endpoint("PATCH", T, None, body=lambda _w, _t: {"display_name": unique("Renamed")}),
    Endpoint("DELETE", T, None, ok=204, fresh=fresh_tenant),
    Endpoint("GET", T + "/api-keys", Perm.KEYS_MANAGE),
    Endpoint("POST", T + "/api-keys", Perm.KEYS_MANAGE, 201, lambda _w, _t: {"name": unique("k")}),
    Endpoint("DELETE", T + "/api-keys/{key}", Perm.KEYS_MANAGE, 204, fresh=fresh_key),
    Endpoint("GET", T + "/smtp-submission", Perm.KEYS_MANAGE),
    Endpoint("GET", T + "/email-servers", Perm.SERVERS_READ),
    Endpoint(
        "POST", T + "/email-servers", Perm.SERVERS_WRITE, 201, lambda _w, _t: server(unique("s"))
    ),
    Endpoint("GET", T + "/email-servers/{server}", Perm.SERVERS_READ),
    Endpoint(
        "PUT", T + "/email-servers/{server}", Perm.SERVERS_WRITE, body=lambda _w, _t: server("main")
    ),
    Endpoint(
        "PATCH",
        T + "/email-servers/{server}",
        Perm.SERVERS_WRITE,
        body=lambda _w, _t: {"port": 2525},
    ),
    Endpoint("DELETE", T + "/email-servers/{server}", Perm.SERVERS_WRITE, 204, fresh=fresh_server),
    Endpoint("POST", T + "/email-servers/{server}/resume", Perm.SERVERS_WRITE),
    Endpoint("GET", T + "/limit-presets", Perm.SERVERS_READ),
    Endpoint("GET", T + "/remote-clients", Perm.REMOTE_MANAGE),
    Endpoint(
        "POST", T + "/remote-clients", Perm.REMOTE_MANAGE, 201, lambda _w, _t: {"name": unique("r")}
    ),
    Endpoint("GET", T + "/remote-clients/{remote}", Perm.REMOTE_MANAGE),
    Endpoint("DELETE", T + "/remote-clients/{remote}", Perm.REMOTE_MANAGE, 204, fresh=fresh_remote),
    Endpoint("GET", T + "/export", Perm.EXPORT),
    Endpoint("POST", T + "/import?dry_run=true", Perm.EXPORT, body=export_of),
    Endpoint("POST", T + "/import", Perm.EXPORT, body=export_of),
    Endpoint("GET", T + "/audit", Perm.AUDIT_READ),
    Endpoint("GET", T + "/webhooks", Perm.WEBHOOKS_MANAGE),
    Endpoint(
        "POST",
        T + "/webhooks",
        Perm.WEBHOOKS_MANAGE,
        201,
        lambda _w, _t: {"url": "https://example.com/" + unique("h"), "events": ["message.sent"]},
    ),
    Endpoint("GET", T + "/webhooks/{webhook}", Perm.WEBHOOKS_MANAGE),
    Endpoint(
        "PATCH",
        T + "/webhooks/{webhook}",
        Perm.WEBHOOKS_MANAGE,
        body=lambda _w, _t: {"enabled": True},
    ),
    Endpoint("DELETE", T + "/webhooks/{webhook}", Perm.WEBHOOKS_MANAGE, 204, fresh=fresh_webhook),
    Endpoint("GET", T + "/webhooks/{webhook}/deliveries", Perm.WEBHOOKS_MANAGE),
    Endpoint("POST", T + "/webhooks/{webhook}/test", Perm.WEBHOOKS_MANAGE),
    Endpoint(
        "POST",
        T + "/email-servers/{server}/test",
        Perm.SERVERS_TEST,
        body=lambda _w, _t: {"to": "someone@example.com", "mode": "dry_run"},
    ),
    Endpoint("POST", T + "/email-servers/o365/oauth2/authorize", Perm.SERVERS_WRITE),
    Endpoint("DELETE", T + "/email-servers/o365/oauth2", Perm.SERVERS_WRITE, 204),
    Endpoint(
        "POST",
        T + "/messages",
        Perm.MESSAGES_SEND,
        202,
        lambda _w, _t: {"to": ["x@example.com"], "subject": "s", "text": "t", "hold": True},
    ),
    Endpoint("GET", T + "/messages", Perm.MESSAGES_READ_OWN),
    # Callers that may read only their own messages get 404 for someone else's.
    Endpoint("GET", T + "/messages/{message}", Perm.MESSAGES_READ_OWN, not_own=404),
    Endpoint("GET", T + "/messages/{message}/raw", Perm.MESSAGES_READ_OWN, not_own=404),
    Endpoint("POST", T + "/messages/{message}/release", Perm.MESSAGES_MANAGE, fresh=fresh_message),
    Endpoint("POST", T + "/messages/{message}/cancel", Perm.MESSAGES_MANAGE, fresh=fresh_message),
    # A held message cannot be retried: 409 proves the caller got past authorization.
    Endpoint("POST", T + "/messages/{message}/retry", Perm.MESSAGES_MANAGE, 409),
    Endpoint(
        "POST",
        T + "/messages/release",
        Perm.MESSAGES_MANAGE,
        body=lambda w, t: {"ids": [held_message(w, t)]},
    ),
    Endpoint(
        "POST",
        T + "/messages/cancel",
        Perm.MESSAGES_MANAGE,
        body=lambda w, t: {"ids": [held_message(w, t)]},
    ),
    Endpoint("POST", T + "/messages/retry", Perm.MESSAGES_MANAGE, body=lambda _w, _t: {"ids": []}),
    # A held message cannot be held again: 409 proves the caller got past authorization.
    Endpoint("POST", T + "/messages/{message}/hold", Perm.MESSAGES_MANAGE, 409),
    Endpoint("POST", T + "/messages/hold", Perm.MESSAGES_MANAGE, body=lambda _w, _t: {"ids": []}),
]

SYSTEM_ENDPOINTS: list[Endpoint] = [
    Endpoint("POST", "/api/v1/tenants", None, 201, lambda _w, _t: {"name": unique("new")}),
    Endpoint("GET", "/api/v1/users", None),
    Endpoint(
        "POST",
        "/api/v1/users",
        None,
        201,
        lambda _w, _t: {"username": unique("n"), "password": "x" * 12},
    ),
    Endpoint("GET", "/api/v1/users/{username}", None),
    Endpoint(
        "PATCH", "/api/v1/users/{username}", None, body=lambda _w, _t: {"email": "x@example.com"}
    ),
    Endpoint("DELETE", "/api/v1/users/{username}", None, 204, fresh=fresh_user),
    Endpoint("GET", "/api/v1/system/settings", None),
    Endpoint("GET", "/api/v1/audit", None),
    Endpoint("PUT", "/api/v1/system/settings", None, body=lambda _w, _t: {}),
    Endpoint("GET", "/api/v1/system/email-server", None),
    Endpoint(
        "PUT",
        "/api/v1/system/email-server",
        None,
        body=lambda _w, _t: {k: v for k, v in server("x").items() if k != "name"},
    ),
    Endpoint(
        "POST",
        "/api/v1/system/email-server/test",
        None,
        body=lambda _w, _t: {"to": "someone@example.com", "mode": "dry_run"},
    ),
    Endpoint("DELETE", "/api/v1/system/email-server", None, 204, fresh=fresh_system_server),
]


@dataclass(frozen=True)
class Caller:
    label: str
    token: str
    roles: dict[str, Role]
    system_admin: bool = False

    def expect(self, ep: Endpoint, tenant: str | None) -> int:
        if self.system_admin:
            return ep.ok
        if tenant is not None and tenant not in self.roles:
            return 404  # another tenant's resource: as if it did not exist
        if ep.perm is None:
            return 403
        assert tenant is not None
        perms = ROLE_PERMS[self.roles[tenant]]
        if ep.perm not in perms:
            return 403
        if ep.not_own is not None and Perm.MESSAGES_READ not in perms:
            return ep.not_own  # the standing resources were made by the system administrator
        return ep.ok


def build_world(api: Api) -> tuple[World, list[Caller]]:
    admin = api.admin_token()
    w = World(api, admin)
    r = w.call("PUT", "/api/v1/system/settings", admin, json={"allow_remote_clients": True})
    assert r.status_code == 200, r.text
    for t in TENANTS:
        api.make_tenant(admin, t)
        r = w.call("POST", f"/api/v1/tenants/{t}/email-servers", admin, json=server("main"))
        assert r.status_code == 201, r.text
        r = w.call("POST", f"/api/v1/tenants/{t}/api-keys", admin, json={"name": "standing"})
        key = r.json()["id"]
        r = w.call("POST", f"/api/v1/tenants/{t}/remote-clients", admin, json={"name": "plant"})
        assert r.status_code == 201, r.text
        r = w.call("POST", f"/api/v1/tenants/{t}/email-servers", admin, json=oauth2_server("o365"))
        assert r.status_code == 201, r.text
        w.standing[t] = {"tenant": t, "server": "main", "key": key, "remote": "plant"}
        w.standing[t]["webhook"] = webhook(w, t)
        w.standing[t]["message"] = held_message(w, t)
    w.standing[None] = {"username": "alpha-admin"}
    fresh_system_server(w, None)
    callers = [Caller("system_admin", admin, {}, system_admin=True)]
    for role in (Role.ADMIN, Role.USER, Role.READ_ONLY):
        token = api.make_user(admin, f"alpha-{role.value}".replace("_", "-"), {"alpha": role})
        callers.append(Caller(f"alpha {role.value} user", token, {"alpha": role}))
    for role in (Role.WEB_SERVICE, Role.USER):
        token = api.make_api_key(admin, "alpha", role.value)
        callers.append(Caller(f"alpha {role.value} API key", token, {"alpha": role}))
    # One user, different roles in different tenants.
    mixed = {"alpha": Role.READ_ONLY, "beta": Role.ADMIN}
    callers.append(Caller("mixed user", api.make_user(admin, "mixed", mixed), mixed))
    # Sign-ins set the session cookie on the shared client; these tests send it on purpose only.
    api.client.cookies.clear()
    return w, callers


def check(r: Any, expected: int) -> str:
    """A failure description, or '' when the response is as expected."""
    if r.status_code != expected:
        return f"got {r.status_code}, expected {expected}: {r.text[:200]}"
    if expected >= 400 and r.headers.get("content-type") != "application/problem+json":
        return f"content-type {r.headers.get('content-type')}"
    return ""


def test_roles_and_tenant_isolation(api: Api) -> None:
    w, callers = build_world(api)
    failures = []
    for ep in ENDPOINTS + SYSTEM_ENDPOINTS:
        tenants: tuple[str | None, ...] = TENANTS if "{tenant}" in ep.path else (None,)
        calls = []
        for caller in callers:
            for tenant in tenants:
                expected = caller.expect(ep, tenant)
                succeed = 200 <= expected < 300
                params = ep.fresh(w, tenant) if succeed and ep.fresh else w.standing[tenant]
                body = ep.body(w, tenant) if ep.body else None
                calls.append((succeed, caller, tenant, expected, ep.path.format(**params), body))
        # Denied calls first, all checked against one snapshot (one per call is slow).
        calls.sort(key=lambda call: call[0])
        before = snapshot(api.container)
        checked = False
        for succeed, caller, tenant, expected, path, body in calls:
            if succeed and not checked:
                checked = True
                if changed := diff(before, snapshot(api.container)):
                    failures.append(f"{ep}: denied calls changed stored data: {changed}")
            if problem := check(w.call(ep.method, path, caller.token, json=body), expected):
                failures.append(f"{ep} as {caller.label} on {tenant or '-'}: {problem}")
    assert not failures, "\n".join(failures)


def test_tenant_list_shows_only_own_tenants(api: Api) -> None:
    w, callers = build_world(api)
    for caller in callers:
        r = w.call("GET", "/api/v1/tenants", caller.token)
        assert r.status_code == 200, r.text
        names = {t["name"] for t in r.json()["items"]}
        if caller.system_admin:
            assert names == {"home", *TENANTS}
        else:
            assert names == set(caller.roles), caller.label


# Credential checks do not depend on the database engine: SQLite only, to save time.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unauthenticated_and_bad_credentials_get_401(api: Api) -> None:
    w, _callers = build_world(api)
    bad = [
        {},
        {"Authorization": "Bearer mgs_not-a-session"},
        {"Authorization": "Bearer mgk_not-a-key"},
        {"Authorization": "Bearer something-else"},
        {"Authorization": "Basic YWRtaW46eA=="},
        {"Authorization": "Bearer "},
    ]
    failures = []
    bodies = {ep: ep.body(w, "alpha") if ep.body else None for ep in ENDPOINTS + SYSTEM_ENDPOINTS}
    before = snapshot(api.container)
    for ep in ENDPOINTS + SYSTEM_ENDPOINTS:
        for headers in bad:
            params = w.standing["alpha"] | w.standing[None]
            body = bodies[ep]
            r = api.client.request(ep.method, ep.path.format(**params), headers=headers, json=body)
            if r.status_code != 401 or r.headers["content-type"] != "application/problem+json":
                failures.append(f"{ep} with {headers}: {r.status_code} {r.text[:100]}")
    if changed := diff(before, snapshot(api.container)):
        failures.append(f"unauthenticated requests changed {changed}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cookie_session_needs_csrf_header_for_writes(api: Api) -> None:
    w, _callers = build_world(api)
    r = api.client.post("/api/v1/auth/login", json={"username": "admin", "password": "nope"})
    assert r.status_code == 401
    api.admin_token()  # signs in: the client now holds the HttpOnly session cookie
    assert api.client.cookies.get(SESSION_COOKIE)
    csrf = api.client.get("/api/v1/auth/me").json()["csrf_token"]
    failures = []
    for ep in ENDPOINTS + SYSTEM_ENDPOINTS:
        tenant = "alpha" if "{tenant}" in ep.path else None
        unsafe = ep.method not in ("GET", "HEAD")
        variants = ({}, {CSRF_HEADER: "wrong"}, {CSRF_HEADER: csrf}) if unsafe else ({},)
        for header in variants:
            denied = unsafe and header.get(CSRF_HEADER) != csrf
            params = w.standing[tenant] if denied or not ep.fresh else ep.fresh(w, tenant)
            body = ep.body(w, tenant) if ep.body else None
            before = snapshot(api.container)
            r = api.client.request(ep.method, ep.path.format(**params), headers=header, json=body)
            want = 403 if denied else ep.ok
            if r.status_code != want:
                failures.append(f"{ep} cookie {header}: {r.status_code} {r.text[:100]}")
            if denied and (changed := diff(before, snapshot(api.container))):
                failures.append(f"{ep} cookie {header} changed {changed}")
    assert not failures, "\n".join(failures)
    # The cookie is HttpOnly and SameSite=Strict (README "Roles and tenants").
    r = api.client.post("/api/v1/auth/login", json={"username": "admin", "password": "x" * 8})
    assert r.status_code == 401
    api.client.cookies.clear()
    r = api.client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": "admin-test-password"}
    )
    set_cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie"]
    session = next(v for v in set_cookie if v.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in session and "SameSite=strict" in session
