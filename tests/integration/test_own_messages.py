"""``web_service`` sees its own messages only (issue 13, point 4): own means the same
principal - this API key, or this user - not "the same (empty) API key id"."""

from __future__ import annotations

from tests.conftest import Api, password_server

BASE = "/api/v1/tenants/home/messages"


def _send(api: Api, token: str, **extra: object) -> str:
    r = api.request("POST", BASE, token, json={"to": ["a@example.net"], "text": "x", **extra})
    assert r.status_code == 202, r.text
    mid: str = r.json()["id"]
    return mid


def test_web_service_users_and_keys_see_only_their_own_messages(api: Api) -> None:
    admin = api.admin_token()
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    assert r.status_code == 201, r.text
    ann = api.make_user(admin, "ann", {"home": "web_service"})
    bob = api.make_user(admin, "bob", {"home": "web_service"})
    key = api.make_api_key(admin, "home")
    by = {
        "admin": _send(api, admin),
        "ann": _send(api, ann, idempotency_key="order-1"),
        "bob": _send(api, bob),
        "key": _send(api, key),
    }
    for who, token in (("ann", ann), ("bob", bob), ("key", key)):
        listed = [m["id"] for m in api.request("GET", BASE, token).json()["items"]]
        assert listed == [by[who]], who
        for other, mid in by.items():
            status = 200 if other == who else 404
            assert api.request("GET", f"{BASE}/{mid}", token).status_code == status, (who, other)
            assert api.request("GET", f"{BASE}/{mid}/raw", token).status_code == status
    # Another principal's idempotency key is no way to read its message.
    r = api.request("POST", BASE, bob, json={"to": ["a@example.net"], "idempotency_key": "order-1"})
    assert r.status_code == 409, r.text
    r = api.request("POST", BASE, ann, json={"to": ["a@example.net"], "idempotency_key": "order-1"})
    assert r.status_code == 202 and r.json()["id"] == by["ann"]
    # The admin reads everything.
    assert len(api.request("GET", BASE, admin).json()["items"]) == 4
