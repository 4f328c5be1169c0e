"""SMTP submission in the admin UI (README "SMTP submission"): the API keys page says how to
point an application at mailgate over SMTP, an application does so with exactly what the
page shows, and the messages list marks what came in over SMTP. Desktop and 390 px."""

from __future__ import annotations

import smtplib
from typing import Any

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.smtp_fixtures import SmtpServers
from tests.smtp_submission import message, queued_id

TENANT = "smtpui"


def test_the_api_keys_page_tells_how_to_send_over_smtp_and_the_list_marks_it(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    sink = smtp_servers.start(name="sink")
    with mailgate.api(mailgate.token()) as api:
        r = api.post("/api/v1/tenants", json={"name": TENANT})
        assert r.status_code in (201, 409), r.text
        r = api.post(f"/api/v1/tenants/{TENANT}/email-servers", json=sink.config())
        assert r.status_code in (201, 409), r.text
        r = api.post(f"/api/v1/tenants/{TENANT}/api-keys", json={"name": "printer"})
        assert r.status_code == 201, r.text
        key = r.json()["token"]
        r = api.post(
            f"/api/v1/tenants/{TENANT}/messages",
            json={"to": ["api@example.org"], "subject": "through the API", "text": "x"},
        )
        assert r.status_code == 202, r.text

    sign_in(page)
    page.goto(f"/ui/api-keys?tenant={TENANT}")
    panel = page.locator("#smtp-submission")
    expect(panel.get_by_role("heading", name="Send over SMTP")).to_be_visible()
    values = panel.locator("dd")
    expect(values.nth(0)).to_contain_text("127.0.0.1")
    host = panel.locator("dd code").nth(0).inner_text()
    port = int(panel.locator("dd code").nth(1).inner_text())
    expect(panel).to_contain_text("User name")
    assert panel.locator("dd code").nth(2).inner_text() == TENANT
    expect(panel).to_contain_text("applications on this machine")  # loopback, no TLS
    expect(panel).to_contain_text("X-Mailgate-Hold: yes")
    shot(page, "40-api-keys-smtp")

    # An application configured with exactly what the page shows.
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.login(TENANT, key)
        s.mail("printer@example.com")
        s.rcpt("to@example.org")
        mid = queued_id(s.data(message(subject="scanned invoice")))

    page.goto(f"/ui/messages?tenant={TENANT}")
    row = page.locator("tr", has_text="scanned invoice")
    expect(row.locator(".badge.source")).to_have_text("SMTP")
    expect(page.locator("tr", has_text="through the API").locator(".badge.source")).to_have_count(0)
    shot(page, "41-messages-smtp-source")
    row.get_by_role("link", name="scanned invoice").click()
    expect(page.locator("main")).to_contain_text("over SMTP")
    assert mid in page.url

    # On a phone the panel and the list stay within the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/ui/api-keys?tenant={TENANT}")
    expect(panel.get_by_role("heading", name="Send over SMTP")).to_be_visible()
    panel.scroll_into_view_if_needed()
    shot(page, "42-api-keys-smtp-390")
    wide = panel.evaluate("p => p.scrollWidth > p.clientWidth + 1")
    assert not wide
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.goto(f"/ui/messages?tenant={TENANT}")
    expect(page.locator("tr", has_text="scanned invoice").locator(".badge.source")).to_be_visible()
    shot(page, "43-messages-smtp-source-390")
    page.set_viewport_size({"width": 1366, "height": 900})
