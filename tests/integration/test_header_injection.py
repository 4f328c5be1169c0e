"""Header injection through RFC 2047 encoded words (issue 13, point 2), through the API:
422 naming the field, nothing stored, never a 500."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from tests.conftest import Api, password_server

from mailgate.adapters.db.tables import EmailServer

BASE = "/api/v1/tenants/home/messages"
SERVERS = "/api/v1/tenants/home/email-servers"
CRLF_WORD = "=?utf-8?q?hi=0D=0AX-Injected:_1?="
BODY_WORD = "=?utf-8?b?aGkNCg0KcmVwbGFjZWQgYm9keQ==?="  # "hi\r\n\r\nreplaced body"


def _setup(api: Api, admin: str) -> None:
    r = api.request("POST", SERVERS, admin, json=password_server())
    assert r.status_code == 201, r.text


def _fields(r: Any) -> list[str]:
    assert r.headers["content-type"] == "application/problem+json", r.text
    return [e["field"] for e in r.json()["errors"]]


def test_json_submission_refuses_encoded_line_breaks_naming_the_field(api: Api) -> None:
    admin = api.admin_token()
    _setup(api, admin)
    to = ["a@example.net"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"subject": CRLF_WORD}, "subject"),
        ({"subject": BODY_WORD, "attachments": []}, "subject"),
        ({"headers": {"X-Order": CRLF_WORD}}, "headers.X-Order"),
        ({"from": {"address": "s@example.com", "name": CRLF_WORD}}, "from"),
        ({"to": [{"address": "a@example.net", "name": BODY_WORD}]}, "to.0"),
        ({"cc": [{"address": "c@example.net", "name": CRLF_WORD}]}, "cc.0"),
        ({"reply_to": {"address": "r@example.net", "name": CRLF_WORD}}, "reply_to.0"),
        (
            {"attachments": [{"filename": CRLF_WORD + ".pdf", "content_base64": "eA=="}]},
            "attachments.0.filename",
        ),
        # A long subject goes through the standard library's builder, not the fast one.
        ({"subject": "x" * 100 + " " + CRLF_WORD, "html": "<p>y</p>"}, "subject"),
    ]
    for extra, field in cases:
        r = api.request("POST", BASE, admin, json={"to": to, "text": "body", **extra})
        assert r.status_code == 422, (extra, r.text)
        fields = _fields(r)
        assert any(f.startswith(field) for f in fields), (field, fields)
        if field[:2] in ("fr", "to", "cc", "re"):  # the display name is named
            assert any(f.endswith(".name") for f in fields), fields
    assert api.request("GET", BASE, admin).json()["items"] == []


def test_raw_submission_refuses_encoded_line_breaks(api: Api) -> None:
    admin = api.admin_token()
    _setup(api, admin)
    raw = (
        b"From: s@example.com\r\nTo: a@example.net\r\nBcc: hidden@example.net\r\n"
        b"Subject: " + CRLF_WORD.encode() + b"\r\n\r\nbody\r\n"
    )
    r = api.request("POST", BASE, admin, content=raw, headers={"content-type": "message/rfc822"})
    assert r.status_code == 422, r.text
    assert _fields(r) == ["Subject"]
    assert api.request("GET", BASE, admin).json()["items"] == []


def test_message_defaults_from_name_is_refused_on_save_and_when_stored_earlier(api: Api) -> None:
    admin = api.admin_token()
    body = password_server()
    body["message_defaults"] = {"from_address": "noreply@example.com", "from_name": BODY_WORD}
    r = api.request("POST", SERVERS, admin, json=body)
    assert r.status_code == 422 and _fields(r) == ["message_defaults.from_name"], r.text
    _setup(api, admin)
    r = api.request(
        "PATCH", f"{SERVERS}/DEFAULT", admin, json={"message_defaults": {"from_name": CRLF_WORD}}
    )
    assert r.status_code == 422 and _fields(r) == ["message_defaults.from_name"], r.text

    # A value saved before the check existed: the configuration still loads, but no
    # message and no test e-mail is built with it.
    with api.container.session() as db:
        row = db.scalar(select(EmailServer).where(EmailServer.name == "DEFAULT"))
        assert row is not None
        row.config = {
            **row.config,
            "message_defaults": {**row.config["message_defaults"], "from_name": CRLF_WORD},
        }
    assert api.request("GET", f"{SERVERS}/DEFAULT", admin).status_code == 200
    r = api.request("POST", BASE, admin, json={"to": ["a@example.net"], "text": "x"})
    assert r.status_code == 422 and _fields(r) == ["message_defaults.from_name"], r.text
    r = api.request(
        "POST", f"{SERVERS}/DEFAULT/test", admin, json={"to": "a@example.net", "mode": "send"}
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["ok"] is False
    assert [s["step"] for s in result["steps"]] == ["mail_from"]
    assert "message_defaults.from_name" in result["steps"][0]["detail"]
    assert result["transcript"] == []  # refused before connecting
    assert api.request("GET", BASE, admin).json()["items"] == []
