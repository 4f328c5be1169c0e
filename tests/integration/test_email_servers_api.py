"""CRUD of e-mail server configurations through the API, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.conftest import Api, password_server

BASE = "/api/v1/tenants/home/email-servers"


def test_first_server_is_default_and_secret_is_write_only(api: Api) -> None:
    admin = api.admin_token()
    r = api.request("POST", BASE, admin, json=password_server())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["is_default"] is True
    assert body["authentication"] == {
        "method": "password",
        "username": "sender@example.com",
        "password_set": True,
    }
    assert "S3cret-pw!" not in r.text

    r = api.request("POST", BASE, admin, json=password_server("second"))
    assert r.status_code == 201
    assert r.json()["is_default"] is False
    assert api.request("POST", BASE, admin, json=password_server("second")).status_code == 409

    names = [s["name"] for s in api.request("GET", BASE, admin).json()["items"]]
    assert names == ["DEFAULT", "second"]


def test_put_without_secret_keeps_it_for_the_same_server_and_patch_renames(api: Api) -> None:
    admin = api.admin_token()
    api.request("POST", BASE, admin, json=password_server())
    current = api.request("GET", f"{BASE}/DEFAULT", admin).json()
    current["helo_name"] = "client.example.org"
    r = api.request("PUT", f"{BASE}/DEFAULT", admin, json=current)
    assert r.status_code == 200, r.text
    assert r.json()["authentication"]["password_set"] is True
    with api.container.session() as db:
        row = api.container.servers.get(db, 1, "DEFAULT")
        assert api.container.servers.secrets_of(row).password == "S3cret-pw!"

    r = api.request("PATCH", f"{BASE}/DEFAULT", admin, json={"name": "Main"})
    assert r.status_code == 200 and r.json()["name"] == "Main"
    assert r.json()["authentication"]["password_set"] is True
    assert api.request("GET", f"{BASE}/DEFAULT", admin).status_code == 404


def test_default_cannot_be_deleted_while_others_exist(api: Api) -> None:
    admin = api.admin_token()
    api.request("POST", BASE, admin, json=password_server())
    api.request("POST", BASE, admin, json=password_server("other"))
    r = api.request("DELETE", f"{BASE}/DEFAULT", admin)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert api.request("PATCH", f"{BASE}/other", admin, json={"is_default": True}).json()[
        "is_default"
    ]
    assert api.request("DELETE", f"{BASE}/DEFAULT", admin).status_code == 204
    assert api.request("GET", f"{BASE}/other", admin).json()["is_default"] is True


def test_validation_names_fields_and_changes_nothing(api: Api) -> None:
    admin = api.admin_token()
    api.request("POST", BASE, admin, json=password_server())
    before = api.request("GET", f"{BASE}/DEFAULT", admin).json()
    r = api.request(
        "PATCH", f"{BASE}/DEFAULT", admin, json={"port": 0, "authentication": {"method": "oauth2"}}
    )
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert "port" in fields
    assert api.request("GET", f"{BASE}/DEFAULT", admin).json() == before


def test_secrets_no_key_opens_stay_readable_and_can_be_entered_again(api: Api) -> None:
    """A key dropped before rotating: the configuration still lists, says why, and a save with
    the secret entered again repairs it (instead of a 500 on every page)."""
    from mailgate.adapters.secrets import SecretBox, generate_key

    admin = api.admin_token()
    api.request("POST", BASE, admin, json=password_server())
    api.container.servers.box = SecretBox.from_spec(generate_key())  # the old key is gone

    listed = api.request("GET", BASE, admin)
    assert listed.status_code == 200
    [view] = listed.json()["items"]
    assert "cannot be decrypted" in view["secrets_error"]
    assert view["authentication"]["password_set"] is False

    # Saving without the secret cannot keep what nobody can read: the field is named.
    r = api.request("PATCH", f"{BASE}/DEFAULT", admin, json={"host": "mail.example.org"})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["authentication.password"]
    r = api.request(
        "PATCH", f"{BASE}/DEFAULT", admin, json={"authentication": {"password": "New-pw-123"}}
    )
    assert r.status_code == 200, r.text
    assert "secrets_error" not in r.json() and r.json()["authentication"]["password_set"]
    with api.container.session() as db:
        row = api.container.servers.get(db, 1, "DEFAULT")
        assert api.container.servers.secrets_of(row).password == "New-pw-123"
