"""Status at a glance in a real browser (issue 19 point 6): badges on the server tabs, the
banner when the installation has no system e-mail server, and the message detail."""

from __future__ import annotations

import base64
import time
from typing import Any

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.oauth_server import RunningAuthServer
from tests.smtp_fixtures import SmtpServers

QUOTA = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; quota"


def wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def tab(page: Any, name: str) -> Any:
    return page.locator(f"[role=tab][data-server='{name}']")


def test_tab_badges_for_oauth2_remote_client_and_pause(
    page: Any, mailgate: Mailgate, oauth_server: RunningAuthServer, smtp_servers: SmtpServers
) -> None:
    redirect = f"{mailgate.url}/settings/oauth2code"
    oauth_server.server.add_client("badge-app", "badge-secret", {redirect})
    smtp = smtp_servers.start()
    admin = mailgate.token()
    base = "/api/v1/tenants/badges/email-servers"
    oauth = {
        "method": "oauth2",
        "provider": "microsoft",
        "grant": "authorization_code",
        "username": "sender@example.com",
        "directory_tenant_id": "contoso",
        "client_id": "badge-app",
        "client_secret": "badge-secret",
        "redirect_uri": redirect,
    }
    with mailgate.api(admin) as api:
        assert api.post("/api/v1/tenants", json={"name": "badges"}).status_code == 201
        assert api.put("/api/v1/system/settings", json={"allow_remote_clients": True}).is_success
        r = api.post("/api/v1/tenants/badges/remote-clients", json={"name": "plant-7"})
        assert r.status_code == 201, r.text
        servers = [
            smtp.config("quota"),
            {"name": "fresh", "transport": "microsoft_graph", "authentication": oauth},
            {"name": "revoked", "transport": "microsoft_graph", "authentication": oauth},
            {
                "name": "far",
                "host": "smtp.plant.invalid",
                "remote_output": {"enabled": True, "remote_client": "plant-7"},
            },
        ]
        for body in servers:
            r = api.post(base, json=body)
            assert r.status_code == 201, r.text
        # "revoked": authorized, then the consent is withdrawn and a refresh finds out.
        url = api.post(f"{base}/revoked/oauth2/authorize").json()["authorization_url"]
        back = oauth_server.consent(url)
        # The callback comes from the browser that started the flow (its cookie).
        assert api.get(back, follow_redirects=False).status_code == 303
        assert oauth_server.server.revoke("badge-app") >= 1
        api.post(f"{base}/revoked/oauth2/refresh")
        state = api.get(f"{base}/revoked").json()["oauth2_status"]["state"]
        assert state == "needs_reauthorization", state
        # "quota": the provider's quota answer pauses it (a real worker of mailgate serve).
        smtp.fail("DATA_END", QUOTA, times=None)
        r = api.post(
            "/api/v1/tenants/badges/messages",
            json={"server": "quota", "to": ["x@example.org"], "subject": "q", "text": "q"},
        )
        assert r.status_code == 202, r.text
        wait_for(
            "the pause",
            lambda: api.get(f"{base}/quota").json()["delivery"]["state"] == "paused",
        )

    sign_in(page)
    page.goto("/ui/email-servers?tenant=badges")
    page.wait_for_selector("main[data-ready='1']")
    expect(tab(page, "fresh").locator(".tab-badge.warn")).to_have_text("not authorized")
    expect(tab(page, "revoked").locator(".tab-badge.bad")).to_have_text("re-authorize")
    expect(tab(page, "far").locator(".tab-badge.bad")).to_have_text("client offline")
    expect(tab(page, "quota").locator(".tab-badge.warn")).to_have_text("paused")
    shot(page, "40-tab-badges")
    # Narrower, the tabs scroll inside the ribbon and "+" stays on screen.
    for width, height in ((800, 1000), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        add = page.get_by_role("button", name="New configuration")
        box = add.bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, (width, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shot(page, f"40-tab-badges-{width}")
    page.set_viewport_size({"width": 1366, "height": 900})

    # The paused configuration says why, and an admin can resume it.
    tab(page, "quota").click()
    paused = page.locator(".status-banners .banner.warn")
    expect(paused).to_contain_text("Paused by the provider")
    expect(paused).to_contain_text("SubmissionQuotaExceeded")
    smtp.faults.clear()
    paused.get_by_role("button", name="Resume now").click()
    expect(tab(page, "quota").locator(".tab-badge.warn")).to_have_count(0)
    with mailgate.api(admin) as api:
        assert api.get(f"{base}/quota").json()["delivery"]["state"] == "active"
    tab(page, "far").click()
    expect(page.locator(".status-banners .banner.bad")).to_contain_text(
        '"plant-7" is not connected'
    )


def test_banner_when_there_is_no_system_email_server(page: Any, mailgate: Mailgate) -> None:
    admin = mailgate.token()
    with mailgate.api(admin) as api:
        api.delete("/api/v1/system/email-server")  # whatever an earlier test left
    sign_in(page)
    page.goto("/ui/messages?tenant=home")
    page.wait_for_selector("main[data-ready='1']")
    notice = page.locator("#notices .banner.warn")
    expect(notice).to_contain_text("No system e-mail server")
    expect(notice).to_contain_text("Password reset links")
    notice.get_by_role("link", name="Set up the system e-mail server").click()
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("#notices .banner")).to_have_count(0)  # this page says it itself
    with mailgate.api(admin) as api:
        body = {
            "host": "smtp.example.com",
            "message_defaults": {"from_address": "mailgate@example.com"},
        }
        assert api.put("/api/v1/system/email-server", json=body).is_success
    page.goto("/ui/messages?tenant=home")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("#notices .banner")).to_have_count(0)
    with mailgate.api(admin) as api:
        api.delete("/api/v1/system/email-server")


def test_message_detail_attachments_headers_priority_and_recipients(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start()
    smtp.fail("RCPT", "550 5.1.1 <gone@example.org>: no such user", times=1)
    admin = mailgate.token()
    pdf = b"%PDF-1.4 " + b"x" * 2000
    with mailgate.api(admin) as api:
        assert api.post("/api/v1/tenants", json={"name": "detail"}).status_code == 201
        assert api.post("/api/v1/tenants/detail/email-servers", json=smtp.config()).is_success
        r = api.post(
            "/api/v1/tenants/detail/messages",
            json={
                "to": ["gone@example.org", "here@example.org"],
                "cc": ["copy@example.org"],
                "reply_to": ["answers@example.com"],
                "subject": "Invoice 77",
                "text": "see attachment",
                "priority": "high",
                "metadata": {"order": "77"},
                "attachments": [
                    {
                        "filename": "invoice-77.pdf",
                        "content_type": "application/pdf",
                        "content_base64": base64.b64encode(pdf).decode(),
                    }
                ],
            },
        )
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
        wait_for(
            "delivery",
            lambda: api.get(f"/api/v1/tenants/detail/messages/{mid}").json()["status"] == "sent",
        )
    sign_in(page)
    page.goto(f"/ui/messages/{mid}?tenant=detail")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator(".message-facts")).to_contain_text("high")
    expect(page.locator(".message-facts dd.metadata")).to_contain_text("order: 77")
    rows = page.locator("table.recipients tbody tr")
    expect(rows).to_have_count(3)
    gone = page.locator("tr[data-rcpt='gone@example.org']")
    expect(gone.locator(".badge")).to_have_text("refused")
    expect(gone).to_contain_text("550")
    expect(page.locator("tr[data-rcpt='here@example.org'] .badge")).to_have_text("delivered")
    headers = page.locator("dl.headers")
    expect(headers).to_contain_text("answers@example.com")
    expect(headers).to_contain_text("copy@example.org")
    expect(page.locator("ul.attachments li")).to_have_text(
        ["invoice-77.pdf · application/pdf · 2,009 bytes"]
    )
    shot(page, "41-message-detail", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    shot(page, "42-message-detail-390", full_page=True)


def test_last_test_failed_badge_is_kept_by_mailgate(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start(tls="starttls", users={"alice": "right-password-1"})
    admin = mailgate.token()
    with mailgate.api(admin) as api:
        assert api.post("/api/v1/tenants", json={"name": "tested"}).status_code == 201
        body = smtp.password_config("alice", "wrong-password-1")
        assert api.post("/api/v1/tenants/tested/email-servers", json=body).is_success
    sign_in(page)
    page.goto("/ui/email-servers/DEFAULT?tenant=tested")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator(".last-test")).to_be_hidden()
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator(".test-result")).to_contain_text("Test failed", timeout=20_000)
    expect(tab(page, "DEFAULT").locator(".tab-badge.bad")).to_have_text("test failed")
    expect(page.locator(".last-test")).to_contain_text("failed")
    expect(page.locator(".last-test")).to_contain_text("auth: 535")
    # Kept by mailgate: another browser (or a reload) sees it too.
    page.reload()
    page.wait_for_selector("main[data-ready='1']")
    expect(tab(page, "DEFAULT").locator(".tab-badge.bad")).to_have_text("test failed")
    shot(page, "43-last-test-failed")
