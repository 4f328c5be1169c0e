"""The OAuth2 callback is bound to the browser that started the authorization (issue 13,
point 8): a person lured into opening someone else's authorization link and consenting with
their own account authorizes nothing; the browser that started it still can."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from tests.oauth_env import Env, make_env
from tests.oauth_server import RunningAuthServer, query_of


@pytest.fixture
def lite(tmp_path: Path, sqlite_url: str, oauth_server: RunningAuthServer) -> Iterator[Env]:
    yield from make_env(tmp_path, sqlite_url, oauth_server)


def test_another_browser_cannot_complete_the_authorization(lite: Env) -> None:
    url = lite.authorize_url()  # the admin's client keeps the flow's cookie
    [cookie] = [k for k in lite.api.client.cookies if k.startswith("mailgate_oauth2_")]
    redirect = lite.oauth.consent(url)  # the victim consents at the provider
    parts = urlsplit(redirect)
    with TestClient(lite.api.client.app) as victim:
        r = victim.get(f"{parts.path}?{parts.query}", follow_redirects=False)
    assert r.status_code == 400, r.text
    assert "another browser" in r.json()["detail"]
    assert lite.status()["state"] == "not_authorized"
    assert lite.tokens() == {}

    # The browser that started it completes it (the state was not spent by the refusal).
    r = lite.callback(redirect)
    assert r.status_code == 303, r.text
    assert query_of(r.headers["location"])["oauth2"] == "ok"
    assert lite.status()["state"] == "authorized"
    assert cookie not in lite.api.client.cookies  # the flow's cookie is cleared
