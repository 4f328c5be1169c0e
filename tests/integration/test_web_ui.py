"""The UI's server side: page shells, static assets, the certificate helper."""

from __future__ import annotations

import re
from pathlib import Path

import trustme
from tests.conftest import Api

from mailgate.entrypoints import web


def test_pages_and_assets(api: Api) -> None:
    r = api.client.get("/", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/ui/"
    r = api.client.get("/ui/", follow_redirects=False)
    assert r.status_code == 302
    for path in ("/ui/login", "/ui/forgot-password", "/ui/email-servers", "/ui/messages/abc"):
        r = api.client.get(path)
        assert r.status_code == 200, path
        assert "text/html" in r.headers["content-type"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert api.client.get("/ui/no-such-page").status_code == 404
    css = api.client.get("/ui/static/css/app.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    js = api.client.get("/ui/static/js/pages/servers.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]


def test_every_asset_is_served_by_mailgate() -> None:
    """No CDN, no web fonts, nothing from the internet at run time."""
    root = Path(web.__file__).parent
    loads = re.compile(
        r"""(?:src|href|action)\s*=\s*["']?(?:https?:)?//"""  # HTML attributes
        r"""|url\(\s*["']?(?:https?:)?//"""  # CSS
        r"""|(?:from|import\(|fetch\(|assign\()\s*["'`](?:https?:)?//""",  # JS
        re.IGNORECASE,
    )
    checked = 0
    for path in root.rglob("*"):
        if path.suffix in {".html", ".js", ".css"}:
            checked += 1
            assert not loads.search(path.read_text()), f"{path.name} loads from elsewhere"
    assert checked > 10


def test_certificate_helper(api: Api) -> None:
    token = api.admin_token()
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.com")
    pem = ca.cert_pem.bytes().decode() + leaf.cert_chain_pems[0].bytes().decode()
    r = api.request("POST", "/api/v1/certificates/inspect", token, json={"pem": pem})
    assert r.status_code == 200, r.text
    root, server = r.json()["certificates"]
    assert root["self_signed"] is True and root["expired"] is False
    assert server["self_signed"] is False and server["issuer"] == root["subject"]
    r = api.request("POST", "/api/v1/certificates/inspect", token, json={"pem": "junk"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "pem"
    api.client.cookies.clear()
    r = api.client.post("/api/v1/certificates/inspect", json={"pem": pem})
    assert r.status_code == 401
