"""Sign-in and forgot-password are limited per client address too (issue 13, point 8): one
address cannot spray guesses over many user names, nor ask for reset mail without bound."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.conftest import ADMIN_PASSWORD, Api, make_settings

from mailgate.bootstrap import build, first_start
from mailgate.entrypoints.api.app import create_app


@pytest.fixture
def api(tmp_path: Path, sqlite_url: str) -> Iterator[Api]:
    settings = make_settings(
        tmp_path, sqlite_url, login_max_failures_per_address=3, reset_max_per_address=2
    )
    c = build(settings)
    first_start(c, echo=lambda _m: None)
    with TestClient(create_app(c)) as client:
        yield Api(client, c)
    c.engine.dispose()


def _login(api: Api, username: str, password: str) -> int:
    r = api.client.post("/api/v1/auth/login", json={"username": username, "password": password})
    return int(r.status_code)


def test_one_address_cannot_spray_guesses_over_many_names(api: Api) -> None:
    assert _login(api, "admin", ADMIN_PASSWORD) == 200
    for name in ("alice", "bob", "carol"):  # one guess each: under the per-name limit
        assert _login(api, name, "Summer2026!") == 401
    assert _login(api, "dave", "Summer2026!") == 429
    r = api.client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_reset_requests_are_limited_per_address(api: Api) -> None:
    for name in ("admin", "nobody"):
        r = api.client.post("/api/v1/auth/password-reset", json={"username": name})
        assert r.status_code == 202
    r = api.client.post("/api/v1/auth/password-reset", json={"username": "someone"})
    assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json"
