"""Workflow → Messages in a real browser: held mail released from the list gets delivered."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.smtp_fixtures import SmtpServers

USER, PASSWORD = "sender@example.com", "right-password-42"


def test_hold_release_from_the_list_and_see_it_delivered(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start(tls="starttls", users={USER: PASSWORD}, require_starttls=True)
    admin = mailgate.token()
    with mailgate.api(admin) as api:
        assert api.post("/api/v1/tenants", json={"name": "post"}).status_code == 201
        body = smtp.password_config(USER, PASSWORD)
        assert api.post("/api/v1/tenants/post/email-servers", json=body).status_code == 201
        for i in range(3):
            r = api.post(
                "/api/v1/tenants/post/messages",
                json={
                    "to": [f"r{i}@example.com"],
                    "subject": f"Invoice {i}",
                    "text": f"Invoice number {i}",
                    "hold": True,
                },
            )
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "held"

    sign_in(page)
    page.goto("/ui/messages?tenant=post")
    page.wait_for_selector("main[data-ready='1']")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.locator(".badge")).to_have_text(["held"] * 3)
    page.get_by_role("button", name="sent").click()
    expect(page.locator(".empty")).to_contain_text("No messages match")
    page.get_by_role("button", name="held").click()
    expect(rows).to_have_count(3)
    page.get_by_label("Search messages").fill("Invoice 1")
    expect(rows).to_have_count(1)
    page.get_by_label("Search messages").fill("")
    expect(rows).to_have_count(3)
    page.get_by_role("button", name="all", exact=True).click()
    page.get_by_label("Select Invoice 0").check()
    page.get_by_label("Select Invoice 2").check()
    shot(page, "22-messages-selected")
    page.get_by_role("button", name="Release (2)").click()
    expect(page.locator(".toast").last).to_contain_text("Release: 2 messages")
    smtp.wait_for(2, timeout=30)
    assert sorted(r for m in smtp.received for r in m.rcpt_tos) == [
        "r0@example.com",
        "r2@example.com",
    ]
    for _ in range(30):  # the worker records the outcome right after the SMTP dialogue
        page.get_by_role("button", name="Refresh").click()
        if page.locator("tbody tr[data-status='sent']").count() == 2:
            break
        page.wait_for_timeout(500)
    expect(page.locator("tbody tr[data-status='sent']")).to_have_count(2)
    expect(page.locator("tbody tr[data-status='held']")).to_contain_text("Invoice 1")
    shot(page, "23-messages-released")

    # The detail page: attempt timeline and the raw message.
    page.get_by_role("link", name="Invoice 0").click()
    page.wait_for_url(re.compile(r"/ui/messages/[^/?]+\?tenant=post"))
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("h1")).to_have_text("Invoice 0")
    expect(page.locator(".timeline li.delivered")).to_have_count(1)
    expect(page.locator(".timeline")).to_contain_text("250")
    page.get_by_text("Raw message").click()
    expect(page.locator("pre.raw")).to_contain_text("Subject: Invoice 0")
    shot(page, "24-message-detail")

    # Cancel the one still held, from its own page.
    page.goto("/ui/messages?tenant=post&status=held")
    page.wait_for_selector("main[data-ready='1']")
    page.get_by_role("link", name="Invoice 1").click()
    page.wait_for_selector("main[data-ready='1']")
    page.get_by_role("button", name="Cancel").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel mail").click()
    page.wait_for_selector("main[data-ready='1'] .badge.cancelled")


def test_hold_scheduled_mail_from_the_list(page: Any, mailgate: Mailgate) -> None:
    admin = mailgate.token()
    with mailgate.api(admin) as api:
        assert api.post("/api/v1/tenants", json={"name": "later"}).status_code == 201
        body = {"name": "DEFAULT", "host": "smtp.example.com"}
        assert api.post("/api/v1/tenants/later/email-servers", json=body).status_code == 201
        r = api.post(
            "/api/v1/tenants/later/messages",
            json={
                "from": "a@example.com",
                "to": ["x@example.com"],
                "subject": "Report",
                "send_at": "2999-01-01T00:00:00Z",
            },
        )
        assert r.json()["status"] == "scheduled", r.text

    sign_in(page)
    page.goto("/ui/messages?tenant=later")
    page.wait_for_selector("main[data-ready='1']")
    page.get_by_label("Select Report").check()
    page.get_by_role("button", name="Hold (1)").click()
    expect(page.locator(".toast").last).to_contain_text("Hold: 1 message")
    expect(page.locator("tbody tr[data-status='held']")).to_contain_text("Report")


def test_read_only_user_cannot_act_on_messages(page: Any, mailgate: Mailgate) -> None:
    admin = mailgate.token()
    with mailgate.api(admin) as api:
        assert api.post("/api/v1/tenants", json={"name": "archive"}).status_code == 201
        server = {"name": "DEFAULT", "host": "smtp.example.com"}
        assert api.post("/api/v1/tenants/archive/email-servers", json=server).status_code == 201
        mail = {"from": "a@example.com", "to": ["b@example.com"], "subject": "Kept", "hold": True}
        r = api.post("/api/v1/tenants/archive/messages", json={**mail, "text": "x"})
        assert r.status_code == 202, r.text
        roles = {"archive": "read_only"}
        user = {"username": "archivist", "password": "archivist-1", "roles": roles}
        assert api.post("/api/v1/users", json=user).status_code == 201
    sign_in(page, "archivist", "archivist-1")
    page.goto("/ui/messages?tenant=archive")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("main input[type=checkbox]")).to_have_count(0)
    actions = page.get_by_role("button", name=re.compile("Release|Cancel|Retry"))
    expect(actions).to_have_count(0)
    page.get_by_role("link", name="Kept").click()
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("h1")).to_have_text("Kept")
    expect(actions).to_have_count(0)
    shot(page, "25-messages-read-only")
