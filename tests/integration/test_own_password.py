"""Changing one's own password (``POST /api/v1/auth/password``, the UI's "My account")."""

from __future__ import annotations

from tests.conftest import Api

URL = "/api/v1/auth/password"


def test_change_own_password_ends_every_session(api: Api) -> None:
    admin = api.admin_token()
    r = api.request(
        "POST",
        "/api/v1/users",
        admin,
        json={"username": "self", "password": "first-password-1", "roles": {"home": "user"}},
    )
    assert r.status_code == 201, r.text
    first = api.login("self", "first-password-1")
    second = api.login("self", "first-password-1")
    r = api.request(
        "POST",
        URL,
        first,
        json={"current_password": "first-password-1", "new_password": "second-pw-22"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ok",
        "username": "self",
        "detail": "password changed; every session ended: sign in with the new password",
    }
    for token in (first, second):
        assert api.request("GET", "/api/v1/auth/me", token).status_code == 401
    api.login("self", "second-pw-22")
    assert (
        api.client.post(
            "/api/v1/auth/login", json={"username": "self", "password": "first-password-1"}
        ).status_code
        == 401
    )


def test_wrong_current_password_is_refused_and_throttled(api: Api) -> None:
    admin = api.admin_token()
    user = api.make_user(admin, "guesser", {"home": "user"})
    answers = [
        api.request(
            "POST",
            URL,
            user,
            json={"current_password": f"guess-{i}", "new_password": "whatever-new-1"},
        )
        for i in range(7)
    ]
    assert [r.status_code for r in answers[:5]] == [422] * 5
    assert answers[0].json()["errors"][0]["field"] == "current_password"
    assert answers[-1].status_code == 429  # like sign-ins (MAILGATE_LOGIN_MAX_FAILURES)
    assert api.request("GET", "/api/v1/auth/me", user).status_code == 200  # nothing changed


def test_api_keys_have_no_password(api: Api) -> None:
    admin = api.admin_token()
    r = api.request(
        "POST", "/api/v1/tenants/home/api-keys", admin, json={"name": "k", "role": "admin"}
    )
    key = r.json()["token"]
    r = api.request(
        "POST", URL, key, json={"current_password": "x", "new_password": "long-enough-1"}
    )
    assert r.status_code == 403


def test_no_credential_is_401_and_a_cookie_needs_the_csrf_header(api: Api) -> None:
    from mailgate.entrypoints.api.deps import CSRF_HEADER

    body = {"current_password": "admin-test-password", "new_password": "changed-pw-123"}
    api.client.cookies.clear()
    assert api.client.post(URL, json=body).status_code == 401
    api.admin_token()  # the client now holds the session cookie
    csrf = api.client.get("/api/v1/auth/me").json()["csrf_token"]
    assert api.client.post(URL, json=body).status_code == 403  # no CSRF header
    assert api.client.post(URL, json=body, headers={CSRF_HEADER: "wrong"}).status_code == 403
    r = api.client.post(URL, json=body, headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.text
    assert api.client.get("/api/v1/auth/me").status_code == 401  # this session ended too
    api.login("admin", "changed-pw-123")
