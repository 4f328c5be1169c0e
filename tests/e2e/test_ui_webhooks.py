"""Webhooks, the audit log and message metadata in a real browser (Chromium), at desktop
width and on a 390 px phone: the secret is shown once and signs what the receiver gets, the
test event and the deliveries log, the audit page's filters, metadata on a message's page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


def no_sideways_scroll(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page scrolls sideways by {overflow} px"


def test_webhook_secret_once_test_event_and_deliveries(
    page: Any, mailgate: Mailgate, receiver: WebhookReceiver
) -> None:
    sign_in(page)
    page.goto("/ui/webhooks?tenant=home")
    page.wait_for_selector("main[data-ready='1']")
    page.get_by_label("URL", exact=True).fill("ftp://example.com/x")
    page.get_by_role("button", name="Create webhook").click()
    expect(page.locator("[data-error-for='url']")).to_contain_text("http")
    page.get_by_label("URL", exact=True).fill(receiver.url)
    page.get_by_label("Deferred (will retry)").uncheck()
    page.get_by_role("button", name="Create webhook").click()
    dialog = page.get_by_role("dialog")
    secret = dialog.get_by_label("Token").input_value()
    assert secret.startswith("whsec_")
    shot(page, "40-webhook-secret")
    dialog.get_by_role("button", name="I have stored it").click()
    assert secret not in page.content()  # shown once, then gone
    receiver.secret = secret
    row = page.locator("tr", has_text=receiver.url)
    expect(row).to_contain_text("message.sent")
    expect(row).not_to_contain_text("message.deferred")

    row.get_by_role("button", name="Send test").click()
    expect(page.locator(".toast.ok").last).to_contain_text("Test event delivered: HTTP 200")
    (got,) = receiver.received
    assert got.verified and got.type == "webhook.test"
    receiver.fail(1, status=503)
    row.get_by_role("button", name="Send test").click()
    expect(page.locator(".toast.bad").last).to_contain_text("503")
    row.get_by_role("button", name="Deliveries").click()
    log = page.locator("#deliveries")
    expect(log.locator("tbody tr")).to_have_count(2)
    expect(log.locator("tbody tr").first).to_contain_text("HTTP 503")
    expect(log.locator("tbody tr").nth(1)).to_contain_text("HTTP 200")
    shot(page, "41-webhook-deliveries", full_page=True)

    row.get_by_role("button", name=f"Edit {receiver.url}").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("URL", exact=True).fill("http://")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.locator("[data-error-for='url']")).not_to_be_empty()
    dialog.get_by_label("URL", exact=True).fill(receiver.url)
    dialog.get_by_label("Deferred (will retry)").check()
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    row = page.locator("tr", has_text=receiver.url)
    expect(row).to_contain_text("message.deferred")
    row.get_by_label(f"Enabled: {receiver.url}").uncheck()
    expect(page.locator(".toast.ok").last).to_contain_text("paused")
    with mailgate.api(mailgate.token()) as api:
        (hook,) = [
            w
            for w in api.get("/api/v1/tenants/home/webhooks").json()["items"]
            if w["url"] == receiver.url
        ]
        assert hook["enabled"] is False

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("tr", has_text=receiver.url)).to_be_visible()
    no_sideways_scroll(page)
    shot(page, "42-webhooks-phone", full_page=True)
    page.locator("tr", has_text=receiver.url).get_by_role(
        "button", name=f"Delete {receiver.url}"
    ).click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("tr", has_text=receiver.url)).to_have_count(0)


def test_audit_page_filters_and_metadata_on_a_message(page: Any, mailgate: Mailgate) -> None:
    with mailgate.api(mailgate.token()) as api:
        r = api.post(
            "/api/v1/tenants/home/email-servers",
            json={"name": "AUDITED", "host": "127.0.0.1", "port": 1, "starttls": "disabled"},
        )
        assert r.status_code in (201, 409), r.text
        api.patch("/api/v1/tenants/home/email-servers/AUDITED", json={"port": 2})
        sent = api.post(
            "/api/v1/tenants/home/messages",
            json={
                "server": "AUDITED",
                "from": "noreply@example.com",
                "to": ["x@example.org"],
                "subject": "With metadata",
                "text": "t",
                "hold": True,
                "metadata": {"order": "42", "customer": "c-7"},
            },
        )
        assert sent.status_code == 202, sent.text
        mid = sent.json()["id"]

    sign_in(page)
    page.goto("/ui/audit?tenant=home")
    page.wait_for_selector("main[data-ready='1']")
    table = page.locator("#audit-list")
    expect(table.locator("tr", has_text="email_server.update").first).to_contain_text("port")
    page.get_by_label("Action").select_option("email_server.*")
    expect(table.locator("tbody tr").first).to_contain_text("email_server")
    expect(table).not_to_contain_text("auth.sign_in")
    page.get_by_label("Show").select_option("all")
    page.get_by_label("Action").select_option("auth.*")
    expect(table.locator("tbody tr", has_text="auth.sign_in").first).to_contain_text("admin")
    shot(page, "43-audit", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    no_sideways_scroll(page)
    shot(page, "44-audit-phone", full_page=True)

    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"/ui/messages/{mid}?tenant=home")
    page.wait_for_selector("main[data-ready='1']")
    meta = page.locator("dd.metadata")
    expect(meta).to_contain_text("order: 42")
    expect(meta).to_contain_text("customer: c-7")
    meta.get_by_role("link", name="order: 42").click()
    page.wait_for_url("**/ui/messages?**metadata.order=42**")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("With metadata")
    page.set_viewport_size({"width": 390, "height": 844})
    no_sideways_scroll(page)
