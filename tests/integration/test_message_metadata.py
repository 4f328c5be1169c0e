"""Message metadata (README "Message metadata"): stored with the message from JSON and raw
MIME submissions, returned, filterable with ``?metadata.KEY=VALUE``, and its limits refused
with a 422 that names the field and stores nothing."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.integration.test_messages_api import setup_server

BASE = "/api/v1/tenants/home/messages"
RAW = b"From: a@example.com\r\nTo: x@example.org\r\nSubject: raw\r\n\r\nbody\r\n"


def _send(api: Api, token: str, metadata: Any, **extra: Any) -> Any:
    body = {"to": ["x@example.org"], "subject": "m", "text": "t", "metadata": metadata, **extra}
    return api.request("POST", BASE, token, json=body)


def _count(api: Api, token: str) -> int:
    return len(api.request("GET", f"{BASE}?limit=500", token).json()["items"])


def test_metadata_is_stored_returned_and_filterable(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    key = api.make_api_key(admin, "home")
    first = _send(api, key, {"order": "42", "customer": "c-7 ", "x.y": "ü"})
    assert first.status_code == 202, first.text
    # With an idempotency key the message takes the other path (its own transaction).
    second = _send(api, key, {"order": "43"}, idempotency_key="k-43")
    assert second.status_code == 202, second.text
    raw = api.request(
        "POST",
        f"{BASE}?metadata.order=44&metadata.source=scanner&hold=true",
        key,
        content=RAW,
        headers={"Content-Type": "message/rfc822"},
    )
    assert raw.status_code == 202, raw.text
    plain = _send(api, key, None)
    assert plain.status_code == 202

    one = api.request("GET", f"{BASE}/{first.json()['id']}", admin).json()
    assert one["metadata"] == {"order": "42", "customer": "c-7 ", "x.y": "ü"}  # kept as given
    assert api.request("GET", f"{BASE}/{plain.json()['id']}", admin).json()["metadata"] == {}

    def ids(query: str) -> list[str]:
        r = api.request("GET", f"{BASE}?{query}", admin)
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()["items"]]

    assert ids("metadata.order=42") == [first.json()["id"]]
    assert ids("metadata.order=43") == [second.json()["id"]]
    assert ids("metadata.order=44&metadata.source=scanner") == [raw.json()["id"]]
    assert ids("metadata.order=44&metadata.source=other") == []
    assert ids("metadata.x.y=%C3%BC") == [first.json()["id"]]
    assert ids("metadata.order=4") == []
    listed = {m["id"]: m["metadata"] for m in api.request("GET", BASE, admin).json()["items"]}
    assert listed[raw.json()["id"]] == {"order": "44", "source": "scanner"}
    # A web_service key filters within its own messages only.
    other = api.make_api_key(admin, "home")
    r = api.request("GET", f"{BASE}?metadata.order=42", other)
    assert r.status_code == 200 and r.json()["items"] == []


def test_limits_are_422_naming_the_field_and_store_nothing(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    cases: list[tuple[Any, str]] = [
        ({f"k{i}": "v" for i in range(21)}, "metadata"),
        ({"big": "x" * 2046}, "metadata"),
        ({"n": 42}, "metadata.n"),
        ({"nested": {"a": "b"}}, "metadata.nested"),
        ("order=42", "metadata"),
        ({"": "v"}, "metadata"),
        ({"é": "v"}, "metadata"),
        ({'a"b': "v"}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"nul": "a\x00b"}, "metadata"),
    ]
    for metadata, field in cases:
        r = _send(api, admin, metadata)
        assert r.status_code == 422, (metadata, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert field in [e["field"] for e in r.json()["errors"]], (metadata, r.json())
    # The limits themselves are accepted.
    assert _send(api, admin, {f"k{i}": "v" for i in range(20)}).status_code == 202
    assert _send(api, admin, {"big": "x" * 2045}).status_code == 202
    assert _count(api, admin) == 2

    raw_cases = [
        ("?" + "&".join(f"metadata.k{i}=v" for i in range(21)), "metadata"),
        ("?metadata.big=" + "x" * 2100, "metadata"),
        ("?metadata=order", "metadata"),
        ("?metadata.a%22b=v", 'metadata.a"b'),
    ]
    for query, field in raw_cases:
        r = api.request(
            "POST", BASE + query, admin, content=RAW, headers={"Content-Type": "message/rfc822"}
        )
        assert r.status_code == 422, (query, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], (query, r.json())
    # metadata.* in the query of a JSON request is a mistake, not silently dropped.
    r = api.request(
        "POST", f"{BASE}?metadata.order=1", admin, json={"to": ["x@example.org"], "text": "t"}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "metadata.order"
    r = api.request("GET", f"{BASE}?metadata.a%22b=1", admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == 'metadata.a"b'
    assert _count(api, admin) == 2
