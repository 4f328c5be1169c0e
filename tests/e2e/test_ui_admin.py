"""Administration, system pages and the forgotten-password round trip in a real browser."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.smtp_fixtures import SmtpServers


def control(page: Any, label: str) -> Any:
    return page.get_by_label(label, exact=True).and_(page.locator("input, select, textarea"))


def test_api_key_token_is_shown_once_with_copy(page: Any, mailgate: Mailgate) -> None:
    sign_in(page)
    page.goto("/ui/api-keys?tenant=home")
    page.wait_for_selector("main[data-ready='1']")
    control(page, "Name").fill("erp")
    control(page, "Role").select_option("web_service")
    page.get_by_role("button", name="Create API key").click()
    dialog = page.get_by_role("dialog")
    token = dialog.get_by_label("Token").input_value()
    assert token.startswith("mgk_")
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    shot(page, "12-api-key-created", full_page=False)
    dialog.get_by_role("button", name="I have stored it").click()
    row = page.locator("tr", has_text="erp")
    expect(row).to_contain_text("Web service")
    assert token not in page.content()  # shown once, then gone
    with mailgate.api(token) as api:  # and it works
        assert api.get("/api/v1/auth/me").json()["kind"] == "api_key"
    row.get_by_role("button", name="Revoke erp").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(page.locator("tr", has_text="erp")).to_have_count(0)
    with mailgate.api(token) as api:
        assert api.get("/api/v1/auth/me").status_code == 401


def test_system_admin_pages(page: Any, mailgate: Mailgate) -> None:
    sign_in(page)
    page.goto("/ui/tenants")
    page.wait_for_selector("main[data-ready='1']")
    control(page, "Name").fill("Bad Name")
    page.get_by_role("button", name="Create tenant").click()
    expect(page.locator("[data-error-for='name']")).not_to_be_empty()
    control(page, "Name").fill("acme")
    control(page, "Display name").fill("Acme A/S")
    page.get_by_role("button", name="Create tenant").click()
    expect(page.locator("tr", has_text="Acme A/S")).to_be_visible()
    shot(page, "13-tenants")

    page.goto("/ui/users")
    page.wait_for_selector("main[data-ready='1']")
    page.get_by_role("button", name="New user").click()
    control(page, "User name").fill("alice")
    control(page, "E-mail").fill("alice@example.com")
    control(page, "Password").fill("alice-pass-123")
    control(page, "Role in acme").select_option("admin")
    control(page, "Role in home").select_option("read_only")
    page.get_by_role("button", name="Create user").click()
    row = page.locator("tr", has_text="alice@example.com")
    expect(row).to_contain_text("acme: Administrator")
    expect(row).to_contain_text("home: Read only")
    shot(page, "14-users")

    page.goto("/ui/system-settings")
    page.wait_for_selector("main[data-ready='1']")
    allow = page.get_by_label("Allow remote clients")
    expect(allow).not_to_be_checked()
    allow.check()
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".toast")).to_contain_text("System settings saved")
    shot(page, "15-system-settings")
    page.reload()
    page.wait_for_selector("main[data-ready='1']")
    expect(page.get_by_label("Allow remote clients")).to_be_checked()

    # With remote clients allowed, a tenant admin creates one (token shown once).
    page.goto("/ui/remote-clients?tenant=acme")
    page.wait_for_selector("main[data-ready='1']")
    control(page, "Name").fill("plant-1")
    page.get_by_role("button", name="Create remote client").click()
    dialog = page.get_by_role("dialog")
    assert dialog.get_by_label("Token").input_value()
    dialog.get_by_role("button", name="I have stored it").click()
    expect(page.locator("tr", has_text="plant-1")).to_contain_text("not connected")
    shot(page, "16-remote-clients")


def test_forgot_password_through_the_system_server(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start(
        tls="starttls", users={"mailgate": "smtp-pw-1"}, require_starttls=True
    )
    assert smtp.pki is not None
    admin = mailgate.token()
    with mailgate.api(admin) as api:
        user = {
            "username": "forgetful",
            "email": "forgetful@example.com",
            "password": "old-password-1",
            "roles": {"home": "user"},
        }
        assert api.post("/api/v1/users", json=user).status_code == 201

    # The system e-mail server: the same form as a tenant's, without tabs.
    sign_in(page)
    page.goto("/ui/system-email-server")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("[role=tab]")).to_have_count(0)
    control(page, "Host").fill(smtp.host)
    control(page, "Port").fill(str(smtp.port))
    control(page, "Trusted CA or server certificates (PEM)").fill(smtp.pki.ca_pem)
    control(page, "User and password").check()
    control(page, "User name").fill("mailgate")
    control(page, "Password").fill("smtp-pw-1")
    control(page, "From address").fill("mailgate@example.com")
    page.locator("#save").click()
    expect(page.locator(".toast")).to_contain_text("System e-mail server saved")
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator(".test-result")).to_contain_text("Test passed", timeout=20_000)
    shot(page, "17-system-email-server", full_page=False)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/ui/login"))

    page.get_by_role("link", name="Forgot password?").click()
    control(page, "User name").fill("forgetful")
    page.get_by_role("button", name="Send reset link").click()
    expect(page.locator(".banner.ok")).to_contain_text("reset link is on its way")
    shot(page, "18-forgot-password")
    [msg] = smtp.wait_for(1)
    assert msg.rcpt_tos == ["forgetful@example.com"]
    link = re.search(r"http\S+/ui/reset-password\?token=\S+", msg.message.get_content())
    assert link, msg.message.get_content()
    parts = urlsplit(link.group(0))
    page.goto(f"{parts.path}?{parts.query}")
    control(page, "New password").fill("new-password-22")
    control(page, "Repeat the new password").fill("new-password-2")
    page.get_by_role("button", name="Set new password").click()
    expect(page.locator("[data-error-for='password2']")).to_contain_text("differ")
    control(page, "Repeat the new password").fill("new-password-22")
    shot(page, "19-reset-password")
    page.get_by_role("button", name="Set new password").click()
    page.wait_for_url(re.compile(r"/ui/login\?reset=ok"))
    expect(page.locator(".banner.ok")).to_contain_text("password was changed")
    sign_in(page, "forgetful", "new-password-22")
    # The link works once.
    page.goto(f"{parts.path}?{parts.query}")
    control(page, "New password").fill("third-password-3")
    control(page, "Repeat the new password").fill("third-password-3")
    page.get_by_role("button", name="Set new password").click()
    expect(page.locator("#banner .banner.bad")).to_contain_text("invalid, used or expired")


def test_sign_in_failure_and_tablet_layout(page: Any) -> None:
    page.goto("/")
    page.wait_for_url(re.compile(r"/ui/login"))
    control(page, "User name").fill("admin")
    control(page, "Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".banner.bad")).to_contain_text("Wrong user name or password")
    shot(page, "20-sign-in-failed")
    sign_in(page)
    page.set_viewport_size({"width": 800, "height": 1000})
    page.goto("/ui/email-servers?tenant=home")
    page.wait_for_selector("main[data-ready='1']")
    menu = page.get_by_role("button", name="Menu")
    expect(menu).to_be_visible()
    expect(page.get_by_role("link", name="Messages")).to_be_hidden()
    menu.click()
    expect(page.get_by_role("link", name="Messages")).to_be_visible()
    shot(page, "21-tablet-menu")
    # Keyboard: the skip link comes first.
    page.reload()
    page.wait_for_selector("main[data-ready='1']")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
