"""The one-statement lookup of an API-key submission answers exactly as the step-by-step
path: every combination of key, tenant and server is sent twice, once with the lookup and
once without, and the answers (status and problem) must be the same."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from tests.conftest import Api, password_server

from mailgate.services.outbox import lookup as submission_lookup

BASE = "/api/v1/tenants/{}/messages"


def _answer(api: Api, token: str, tenant: str, server: str | None) -> tuple[int, Any]:
    body: dict[str, Any] = {"to": ["b@example.com"], "subject": "s", "text": "x"}
    if server is not None:
        body["server"] = server
    r = api.request("POST", BASE.format(tenant), token, json=body)
    if r.status_code == 202:
        return 202, r.json()["status"]
    problem = r.json()
    return r.status_code, (problem.get("detail"), problem.get("errors"))


def test_same_answers_with_and_without_the_lookup(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = api.admin_token()
    api.make_tenant(admin, "acme")
    api.make_tenant(admin, "empty")  # no e-mail server at all
    for tenant in ("home", "acme"):
        r = api.request(
            "POST", f"/api/v1/tenants/{tenant}/email-servers", admin, json=password_server()
        )
        assert r.status_code == 201, r.text
    r = api.request(
        "POST", "/api/v1/tenants/acme/email-servers", admin, json=password_server("BULK")
    )
    assert r.status_code == 201, r.text
    keys = {
        "acme sender": api.make_api_key(admin, "acme"),
        "acme read-only": api.make_api_key(admin, "acme", role="read_only"),
        "home sender": api.make_api_key(admin, "home"),
        "empty sender": api.make_api_key(admin, "empty"),
        "unknown": "mgk_" + "x" * 40,
    }
    revoked = api.make_api_key(admin, "acme", role="admin")
    listed = api.request("GET", "/api/v1/tenants/acme/api-keys", admin).json()
    key_id = next(k["id"] for k in listed["items"] if k["role"] == "admin")
    assert api.request("DELETE", f"/api/v1/tenants/acme/api-keys/{key_id}", admin).status_code in (
        200,
        204,
    )
    keys["revoked"] = revoked

    cases = list(itertools.product(keys, ["acme", "home", "empty", "nope"], [None, "BULK", "X"]))
    real, hits = submission_lookup.lookup, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        hits.append(found is not None)
        return found

    monkeypatch.setattr(submission_lookup, "lookup", spy)
    with_lookup = {case: _answer(api, keys[case[0]], case[1], case[2]) for case in cases}
    assert any(hits) and not all(hits)  # the lookup answered some, and left the rest
    used = {case for case, answer in with_lookup.items() if answer[0] == 202}
    assert ("acme sender", "acme", "BULK") in used and ("acme sender", "acme", None) in used

    monkeypatch.setattr(submission_lookup, "lookup", lambda *a, **k: None)
    without = {case: _answer(api, keys[case[0]], case[1], case[2]) for case in cases}
    assert with_lookup == without
    assert {a[0] for a in without.values()} >= {202, 401, 403, 404, 422}


def test_prepared_rows_are_sqlalchemys_rows(api: Api) -> None:
    """``PreparedSelect`` (the DBAPI connection on SQLite) gives exactly the rows that
    ``Connection.execute`` gives for the same statement: types through the same processors
    (a stored ``last_used_at`` comes back as the same aware datetime), parameters bound the
    same, no row more or less."""
    from datetime import UTC, datetime

    from sqlalchemy import update

    from mailgate.adapters.db.tables import ApiKey
    from mailgate.services.identity import token_hash

    admin = api.admin_token()
    r = api.request("POST", "/api/v1/tenants/home/email-servers", admin, json=password_server())
    assert r.status_code == 201, r.text
    used, fresh = api.make_api_key(admin, "home"), api.make_api_key(admin, "home")
    c = api.container
    with c.session() as db:
        db.execute(
            update(ApiKey)
            .where(ApiKey.token_hash == token_hash(used))
            .values(last_used_at=datetime(2026, 11, 30, 4, 5, 6, 789000, tzinfo=UTC))
        )
        db.commit()
    compared = 0
    with c.submission_reads.connect() as conn:
        for token, tenant, server in itertools.product(
            [used, fresh, "mgk_unknown"], ["home", "nope"], [None, "DEFAULT", "X"]
        ):
            prepared = submission_lookup._DEFAULT if server is None else submission_lookup._NAMED
            values = {"h": token_hash(token), "tenant": tenant, "server": server}
            expected = [tuple(row) for row in conn.execute(prepared.statement, values)]
            assert prepared.run(conn, values) == expected
            compared += bool(expected)
    assert compared == 4  # both keys, default and named server
    with c.submission_reads.connect() as conn:
        row = submission_lookup._DEFAULT.run(conn, {"h": token_hash(used), "tenant": "home"})[0]
    assert row[4] == datetime(2026, 11, 30, 4, 5, 6, 789000, tzinfo=UTC)
