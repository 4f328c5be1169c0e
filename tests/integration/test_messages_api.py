"""The send API without delivery: submission, validation, idempotency, steering, isolation."""

from __future__ import annotations

import base64
from email import message_from_bytes, policy
from typing import Any

from tests.conftest import Api, password_server

from mailgate.schemas.out.message import SubmittedOut

BASE = "/api/v1/tenants/home/messages"


def setup_server(api: Api, admin: str, tenant: str = "home", **overrides: Any) -> None:
    body = password_server(
        message_defaults={
            "from_address": "noreply@example.com",
            "from_name": "Example",
            "bcc": ["archive@example.com"],
            "headers": {"X-Default": "yes"},
        },
        **overrides,
    )
    r = api.request("POST", f"/api/v1/tenants/{tenant}/email-servers", admin, json=body)
    assert r.status_code == 201, r.text


def test_submit_builds_mime_with_defaults_and_stores_it(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    pdf = b"%PDF-1.4 fake but binary \x00\xff"
    r = api.request(
        "POST",
        BASE,
        admin,
        json={
            "to": ["x@example.org", {"address": "z@example.org", "name": "Zed Ø"}],
            "subject": "Invoice 42 - é",
            "text": "plain\n",
            "html": "<p>html</p>",
            "attachments": [
                {
                    "filename": "invoice.pdf",
                    "content_type": "application/pdf",
                    "content_base64": base64.b64encode(pdf).decode(),
                }
            ],
            "headers": {"X-Order": "42"},
            "priority": "high",
        },
    )
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    assert r.json()["status"] == "queued"

    got = api.request("GET", f"{BASE}/{mid}", admin).json()
    assert got["envelope"] == {
        "mail_from": "noreply@example.com",
        "rcpt_to": ["x@example.org", "z@example.org", "archive@example.com"],
    }
    assert got["priority"] == "high" and got["attempts"] == []
    assert got["headers"]["Subject"] == "Invoice 42 - é"
    assert got["headers"]["Message-ID"].endswith("@example.com>")
    assert got["attachments"] == [
        {"filename": "invoice.pdf", "content_type": "application/pdf", "size_bytes": len(pdf)}
    ]

    raw = api.request("GET", f"{BASE}/{mid}/raw", admin)
    assert raw.headers["content-type"].startswith("message/rfc822")
    msg = message_from_bytes(raw.content, policy=policy.default)
    assert msg["Bcc"] is None  # Bcc recipients are in the envelope only
    assert str(msg["From"]) == "Example <noreply@example.com>"
    assert msg["X-Order"] == "42" and msg["X-Default"] == "yes" and msg["Date"]
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == "plain\n"
    assert msg.get_body(("html",)).get_content().strip() == "<p>html</p>"
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == "invoice.pdf" and att.get_content() == pdf


def test_validation_names_the_field_and_stores_nothing(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin, limits={"max_message_bytes": 2048})
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"to": ["not-an-address"]}, 422, "to"),
        ({"to": ["a@example.net"], "subject": "x\r\nBcc: victim@evil.example"}, 422, "subject"),
        ({"to": [{"address": "a@example.net", "name": "A\nBcc: v@evil.example"}]}, 422, "to"),
        ({"to": ["a@example.net"], "headers": {"X-A": "1\r\nBcc: v@evil.example"}}, 422, "headers"),
        ({"to": ["a@example.net"], "headers": {"Bcc": "v@evil.example"}}, 422, "headers"),
        (
            {"to": ["a@example.net"], "attachments": [{"filename": "a", "content_base64": "%%"}]},
            422,
            "attachments.0.content_base64",
        ),
        ({"to": ["a@example.net"], "server": "NOPE"}, 422, "server"),
        ({"to": ["a@example.net"], "priority": "urgent"}, 422, "priority"),
        ({"to": ["a@example.net"], "send_at": "2026-01-01T00:00:00"}, 422, "send_at"),
        ({"to": ["a@example.net"], "text": "x" * 5000}, 413, ""),
    ]
    for body, code, field in cases:
        r = api.request("POST", BASE, admin, json=body)
        assert r.status_code == code, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        if field:
            fields = [e["field"] for e in r.json()["errors"]]
            assert any(f.startswith(field) for f in fields), (field, fields)
    r = api.request(
        "POST", BASE, admin, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    r = api.request("POST", BASE, admin, content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert api.request("GET", BASE, admin).json()["items"] == []


def test_idempotency_key_returns_the_first_message(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    body = {"to": ["a@example.net"], "subject": "once", "idempotency_key": "order-42"}
    first = api.request("POST", BASE, admin, json=body)
    again = api.request("POST", BASE, admin, json={**body, "subject": "twice"})
    header = api.request(
        "POST", BASE, admin, json={"to": ["a@example.net"]}, headers={"Idempotency-Key": "order-42"}
    )
    assert first.status_code == again.status_code == header.status_code == 202
    assert first.json()["id"] == again.json()["id"] == header.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(api.request("GET", BASE, admin).json()["items"]) == 1


def test_raw_rfc822_submission(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    raw = (
        b"From: Sender <s@example.com>\n"
        b"To: a@example.net, B <b@example.net>\n"
        b"Bcc: hidden@example.net\n"
        b"Subject: raw one\n"
        b"\n"
        b"body line\n"
    )
    r = api.request(
        "POST", f"{BASE}?hold=true", admin, content=raw, headers={"content-type": "message/rfc822"}
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "held"
    got = api.request("GET", f"{BASE}/{r.json()['id']}", admin).json()
    assert got["envelope"]["rcpt_to"] == ["a@example.net", "b@example.net", "hidden@example.net"]
    assert (
        got["envelope"]["mail_from"] == "noreply@example.com"
        or got["envelope"]["mail_from"] == "s@example.com"
    )
    stored = api.request("GET", f"{BASE}/{r.json()['id']}/raw", admin).content
    assert b"hidden@example.net" not in stored and b"Message-ID:" in stored and b"\r\n" in stored
    r = api.request(
        "POST",
        BASE,
        admin,
        content=b"Subject: x\n\nno one\n",
        headers={"content-type": "message/rfc822"},
    )
    assert r.status_code == 422


def test_hold_release_cancel_retry_and_bulk(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    ids = [
        api.request("POST", BASE, admin, json={"to": ["a@example.net"], "hold": True}).json()["id"]
        for _ in range(3)
    ]
    sched = api.request(
        "POST", BASE, admin, json={"to": ["a@example.net"], "send_at": "2999-01-01T00:00:00Z"}
    ).json()
    assert sched["status"] == "scheduled"

    r = api.request("POST", f"{BASE}/{ids[0]}/release", admin)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    r = api.request("POST", f"{BASE}/{ids[0]}/release", admin)
    assert r.status_code == 409 and "cannot release a queued message" in r.json()["detail"]
    r = api.request("POST", f"{BASE}/{ids[0]}/retry", admin)
    assert r.status_code == 409
    assert api.request("POST", f"{BASE}/{ids[0]}/cancel", admin).json()["status"] == "cancelled"
    assert api.request("POST", f"{BASE}/{ids[0]}/cancel", admin).status_code == 409
    assert api.request("POST", f"{BASE}/{'0' * 32}/cancel", admin).status_code == 404

    r = api.request("POST", f"{BASE}/release", admin, json={"ids": [ids[1], ids[0], "nope"]})
    assert r.status_code == 200
    assert r.json()["ids"] == [ids[1]]
    assert {s["id"] for s in r.json()["skipped"]} == {ids[0], "nope"}
    r = api.request("POST", f"{BASE}/cancel", admin, json={"status": "held"})
    assert r.json()["ids"] == [ids[2]]
    r = api.request("POST", f"{BASE}/retry", admin, json={"status": "held"})
    assert r.status_code == 409
    r = api.request("POST", f"{BASE}/cancel", admin, json={})
    assert r.status_code == 422

    listed = api.request("GET", f"{BASE}?status=cancelled", admin).json()
    assert {m["id"] for m in listed["items"]} == {ids[0], ids[2]}
    assert api.request("GET", f"{BASE}?status=bogus", admin).status_code == 422


def test_hold_stops_waiting_mail_until_released(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    queued = api.request("POST", BASE, admin, json={"to": ["a@example.net"]}).json()["id"]
    later = api.request(
        "POST", BASE, admin, json={"to": ["a@example.net"], "send_at": "2999-01-01T00:00:00Z"}
    ).json()["id"]

    r = api.request("POST", f"{BASE}/{queued}/hold", admin)
    assert r.status_code == 200 and r.json()["status"] == "held"
    r = api.request("POST", f"{BASE}/{queued}/hold", admin)
    assert r.status_code == 409 and "cannot hold a held message" in r.json()["detail"]
    # A held message is not claimable: the worker's due query must not see it.
    detail = api.request("GET", f"{BASE}/{queued}", admin).json()
    assert detail["status"] == "held" and detail["next_attempt_at"] is None

    r = api.request("POST", f"{BASE}/hold", admin, json={"status": "scheduled"})
    assert r.status_code == 200 and r.json()["ids"] == [later]
    assert api.request("POST", f"{BASE}/hold", admin, json={"status": "sent"}).status_code == 409

    # Release puts each back where it belongs: the queue, or waiting for its send_at.
    assert api.request("POST", f"{BASE}/{queued}/release", admin).json()["status"] == "queued"
    assert api.request("POST", f"{BASE}/{later}/release", admin).json()["status"] == "scheduled"


def test_list_pagination_search_and_isolation(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    api.make_tenant(admin, "other")
    setup_server(api, admin, tenant="other")
    for i in range(5):
        api.request("POST", BASE, admin, json={"to": [f"r{i}@example.net"], "subject": f"s{i}"})
    page1 = api.request("GET", f"{BASE}?limit=2", admin).json()
    assert [m["subject"] for m in page1["items"]] == ["s4", "s3"]
    page2 = api.request("GET", f"{BASE}?limit=2&cursor={page1['next_cursor']}", admin).json()
    page3 = api.request("GET", f"{BASE}?limit=2&cursor={page2['next_cursor']}", admin).json()
    assert [m["subject"] for m in page2["items"] + page3["items"]] == ["s2", "s1", "s0"]
    assert page3["next_cursor"] is None
    found = api.request("GET", f"{BASE}?q=r3@example.net", admin).json()["items"]
    assert [m["subject"] for m in found] == ["s3"]
    assert api.request("GET", f"{BASE}?cursor=zzz", admin).status_code == 422

    # Another tenant's user sees nothing of home, not even that a message exists.
    other = api.make_user(admin, "olga", {"other": "admin"})
    mid = page1["items"][0]["id"]
    assert api.request("GET", f"{BASE}/{mid}", other).status_code == 404
    assert api.request("GET", f"/api/v1/tenants/other/messages/{mid}", other).status_code == 404
    assert (
        api.request("POST", f"/api/v1/tenants/other/messages/{mid}/cancel", other).status_code
        == 404
    )
    assert api.request("GET", "/api/v1/tenants/other/messages", other).json()["items"] == []

    # A web_service key sends, and sees only what it sent; it cannot steer messages.
    key = api.make_api_key(admin, "home")
    own = api.request("POST", BASE, key, json={"to": ["k@example.net"]}).json()["id"]
    assert [m["id"] for m in api.request("GET", BASE, key).json()["items"]] == [own]
    assert api.request("GET", f"{BASE}/{mid}", key).status_code == 404
    assert api.request("GET", f"{BASE}/{own}", key).status_code == 200
    assert api.request("POST", f"{BASE}/{own}/cancel", key).status_code == 403


def test_healthz_and_metrics_count_the_queue(api: Api) -> None:
    admin = api.admin_token()
    setup_server(api, admin)
    api.request("POST", BASE, admin, json={"to": ["a@example.net"]})
    api.request("POST", BASE, admin, json={"to": ["a@example.net"], "hold": True})
    health = api.client.get("/healthz").json()
    assert health["queue"]["queued"] == 1 and health["queue"]["held"] == 1
    text = api.client.get("/metrics").text
    assert 'mailgate_messages{status="queued"} 1.0' in text
    assert "mailgate_queue_depth 1.0" in text


def test_the_submission_endpoint_is_documented_and_served_by_one_function(api: Api) -> None:
    """It is served by a plain route ahead of FastAPI's (messages.submit_route); the FastAPI
    route still documents it, and both must be the same endpoint."""
    op = api.client.get("/openapi.json").json()["paths"]["/api/v1/tenants/{tenant}/messages"]
    post = op["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "message/rfc822"}
    assert {p["name"] for p in post["parameters"]} >= {
        "tenant",
        "server",
        "hold",
        "send_at",
        "priority",
        "Idempotency-Key",
    }
    assert "202" in post["responses"]
    assert "get" in op  # the list, served by FastAPI
    r = api.request("POST", BASE, api.admin_token(), json={"to": ["a@example.com"]})
    assert r.status_code == 422  # the plain route answers: no server yet
    assert r.json()["errors"][0]["field"] == "server"


def test_the_plain_routes_answer_is_the_documented_model(api: Api) -> None:
    """The plain route writes its JSON itself (validating it would cost the hot path); what
    it writes, a replayed answer included, must be exactly what ``SubmittedOut`` documents."""
    admin = api.admin_token()
    setup_server(api, admin)
    doc = api.client.get("/openapi.json").json()
    accepted = doc["paths"]["/api/v1/tenants/{tenant}/messages"]["post"]["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SubmittedOut"
    }
    answers = [
        api.request("POST", BASE, admin, json={"to": ["a@example.net"], "hold": True}),
        api.request(
            "POST", BASE, admin, json={"to": ["a@example.net"]}, headers={"Idempotency-Key": "k"}
        ),
        api.request(
            "POST", BASE, admin, json={"to": ["a@example.net"]}, headers={"Idempotency-Key": "k"}
        ),
    ]
    assert answers[2].headers["Idempotent-Replayed"] == "true"
    for r in answers:
        assert r.status_code == 202, r.text
        documented = SubmittedOut.model_validate_json(r.content)
        assert r.json() == documented.model_dump(mode="json", by_alias=True)
