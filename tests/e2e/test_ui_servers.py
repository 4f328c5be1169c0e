"""The E-mail server page in a real browser (issue 7, "How it is tested")."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.oauth_server import RunningAuthServer
from tests.smtp_fixtures import SmtpServers

USER, PASSWORD = "sender@example.com", "right-password-42"


def expect_tabs(page: Any, labels: list[str]) -> None:
    expect(page.locator("[role=tab] .tab-label")).to_have_text(labels)


def control(page: Any, label: str) -> Any:
    """The input, select or textarea labelled exactly ``label`` (not the section of that name)."""
    return page.get_by_label(label, exact=True).and_(page.locator("input, select, textarea"))


def make_tenant(mailgate: Mailgate, token: str, name: str) -> None:
    with mailgate.api(token) as api:
        r = api.post("/api/v1/tenants", json={"name": name})
        assert r.status_code == 201, r.text


def test_ribbon_create_rename_validate_save_remove(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start(tls="starttls", users={USER: PASSWORD}, require_starttls=True)
    assert smtp.pki is not None
    admin = mailgate.token()
    make_tenant(mailgate, admin, "ribbon")
    sign_in(page)
    page.goto("/ui/email-servers?tenant=ribbon")
    page.wait_for_selector("main[data-ready='1']")

    # An empty tenant explains itself; its first configuration is named DEFAULT.
    page.get_by_role("button", name="Add the first e-mail server").click()
    expect_tabs(page, ["DEFAULT"])
    expect(control(page, "Name")).to_have_value("DEFAULT")
    control(page, "Host").fill(smtp.host)
    control(page, "Port").fill(str(smtp.port))
    control(page, "Trusted CA or server certificates (PEM)").fill(smtp.pki.ca_pem)
    expect(page.locator(".cert-info").first).to_contain_text("self-signed")
    control(page, "User and password").check()
    control(page, "User name").fill(USER)
    control(page, "Password").fill(PASSWORD)
    control(page, "From address").fill("noreply@example.com")
    shot(page, "02-server-new-default")
    page.locator("#save").click()
    expect(page.locator(".toast")).to_contain_text("Saved DEFAULT")
    expect(page.locator("[role=tab][aria-selected=true]")).to_contain_text("default")

    # The password is stored: the form says "set" and never shows it.
    secret = page.locator("[data-field-path='authentication.password']")
    expect(secret).to_contain_text("set")
    expect(secret.get_by_role("button", name="Change")).to_be_visible()
    assert PASSWORD not in page.content()

    # The ribbon follows the WAI-ARIA tabs pattern: arrow keys move between the tabs.
    page.get_by_role("tab", name=re.compile("DEFAULT")).focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("button", name="New configuration")).to_be_focused()

    # "+" opens a new empty configuration; typing the name updates the tab label at once.
    page.get_by_role("button", name="New configuration").click()
    expect_tabs(page, ["DEFAULT", "New server"])
    name = control(page, "Name")
    expect(name).to_be_focused()
    name.press_sequentially("invo")
    expect_tabs(page, ["DEFAULT", "invo"])
    name.press_sequentially("ices")
    expect_tabs(page, ["DEFAULT", "invoices"])

    # The port follows the protocol's default until it is edited.
    port = control(page, "Port")
    control(page, "Protocol").select_option("smtps")
    expect(port).to_have_value("465")
    control(page, "Protocol").select_option("smtp")
    expect(port).to_have_value("587")
    port.fill("2525")
    control(page, "Protocol").select_option("smtps")
    expect(port).to_have_value("2525")
    expect(control(page, "STARTTLS")).to_be_disabled()
    control(page, "Protocol").select_option("smtp")

    # Validation errors from the API land next to their fields.
    control(page, "User and password").check()
    page.locator("#save").click()
    expect(page.locator("[data-error-for='host']")).not_to_be_empty()
    control(page, "Host").fill("smtp.example.com")
    page.locator("#save").click()
    invalid = page.locator(".field.invalid:visible")
    expect(invalid).to_have_count(2)  # the user name and the password, next to their inputs
    expect(invalid.first).to_contain_text("User name")
    expect(invalid.last).to_contain_text("required for password login")
    shot(page, "03-server-validation-errors")
    control(page, "User name").fill("invoices@example.com")
    control(page, "Password").fill("another-secret-1")
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_contain_text("Saved invoices")
    expect_tabs(page, ["DEFAULT", "invoices"])
    expect(page).to_have_url(re.compile(r"/ui/email-servers/invoices\?tenant=ribbon"))

    # Leaving a configuration with unsaved changes asks first.
    control(page, "Subject").fill("changed")
    page.get_by_role("tab", name=re.compile("DEFAULT")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("unsaved changes")
    dialog.get_by_role("button", name="Cancel").click()
    expect(control(page, "Subject")).to_have_value("changed")
    control(page, "Subject").fill("")

    # "Remove server" is staged and takes effect on Save.
    page.get_by_role("button", name="Remove server").click()
    expect(page.locator("[role=tab].removed")).to_have_count(1)
    with mailgate.api(admin) as api:
        names = [s["name"] for s in api.get("/api/v1/tenants/ribbon/email-servers").json()["items"]]
    assert names == ["DEFAULT", "invoices"]
    shot(page, "04-server-remove-staged", full_page=False)
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_contain_text("Removed invoices")
    expect_tabs(page, ["DEFAULT"])
    with mailgate.api(admin) as api:
        names = [s["name"] for s in api.get("/api/v1/tenants/ribbon/email-servers").json()["items"]]
    assert names == ["DEFAULT"]
    shot(page, "05-server-saved")


def test_read_only_user_sees_no_edit_controls(page: Any, mailgate: Mailgate) -> None:
    admin = mailgate.token()
    make_tenant(mailgate, admin, "readers")
    with mailgate.api(admin) as api:
        body = {
            "name": "DEFAULT",
            "host": "smtp.example.test",
            "authentication": {"method": "password", "username": "u@example.com"}
            | {"password": "stored-secret-9"},
        }
        assert api.post("/api/v1/tenants/readers/email-servers", json=body).status_code == 201
        user = {
            "username": "reader",
            "password": "reader-pass-1",
            "roles": {"readers": "read_only"},
        }
        assert api.post("/api/v1/users", json=user).status_code == 201
    sign_in(page, "reader", "reader-pass-1")
    page.goto("/ui/email-servers?tenant=readers")
    page.wait_for_selector("main[data-ready='1']")
    expect(control(page, "Host")).to_have_value("smtp.example.test")
    expect(control(page, "Host")).to_be_disabled()
    expect(page.locator("#save")).to_have_count(0)
    expect(page.get_by_role("button", name="New configuration")).to_have_count(0)
    expect(page.get_by_role("button", name="Change")).to_have_count(0)
    expect(page.get_by_role("button", name="Send test e-mail")).to_have_count(0)
    expect(page.get_by_role("link", name="API keys")).to_be_hidden()
    expect(page.get_by_role("link", name="Users")).to_be_hidden()
    expect(page.locator("#role-note")).to_contain_text("read only")
    assert "stored-secret-9" not in page.content()
    editable = page.locator("main input:not([disabled]):not([type=file]):not([type=email])")
    expect(editable).to_have_count(0)
    shot(page, "06-server-read-only")


def test_tenant_switcher(page: Any, mailgate: Mailgate) -> None:
    admin = mailgate.token()
    make_tenant(mailgate, admin, "north")
    make_tenant(mailgate, admin, "south")
    with mailgate.api(admin) as api:
        user = {
            "username": "traveller",
            "password": "traveller-pass-1",
            "roles": {"north": "admin", "south": "read_only"},
        }
        assert api.post("/api/v1/users", json=user).status_code == 201
    sign_in(page, "traveller", "traveller-pass-1")
    switch = control(page, "Tenant")
    expect(switch).to_be_visible()
    assert sorted(switch.locator("option").all_inner_texts()) == ["north", "south"]
    expect(switch).to_have_value("north")  # the first tenant with a role
    expect(page.locator("#role-note")).to_contain_text("administrator")
    expect(page.get_by_role("link", name="API keys")).to_be_visible()
    switch.select_option("south")
    page.wait_for_url(re.compile(r"tenant=south"))
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("#role-note")).to_contain_text("read only")
    expect(page.get_by_role("link", name="API keys")).to_be_hidden()
    expect(page.get_by_role("link", name="Messages")).to_have_attribute(
        "href", re.compile(r"tenant=south")
    )
    shot(page, "07-tenant-switcher", full_page=False)


def test_send_test_email_steps_and_wrong_password_hint(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start(tls="starttls", users={USER: PASSWORD}, require_starttls=True)
    admin = mailgate.token()
    make_tenant(mailgate, admin, "tester")
    with mailgate.api(admin) as api:
        body = smtp.password_config(USER, PASSWORD)
        assert api.post("/api/v1/tenants/tester/email-servers", json=body).status_code == 201
    sign_in(page)
    page.goto("/ui/email-servers/DEFAULT?tenant=tester")
    page.wait_for_selector("main[data-ready='1']")

    control(page, "Send test e-mail to").fill("someone@example.com")
    page.get_by_role("button", name="Send test e-mail").click()
    steps = page.locator("ol.steps li")
    expect(steps.locator(".badge")).to_have_text(["ok"] * 8, timeout=20_000)
    expect(steps.locator(".name")).to_have_text(
        ["resolve", "connect", "tls", "ehlo", "auth", "mail_from", "rcpt_to", "data"]
    )
    expect(page.locator(".test-result")).to_contain_text("Test passed")
    [msg] = smtp.wait_for(1)
    assert msg.rcpt_tos == ["someone@example.com"] and msg.tls
    page.locator(".test-result details summary").click()
    expect(page.locator(".test-result pre")).to_contain_text("STARTTLS")
    shot(page, "08-test-email-ok", full_page=False)
    # On a phone each step's detail gets the full width below its name.
    page.set_viewport_size({"width": 390, "height": 844})
    detail = page.locator("ol.steps li[data-step='data'] .detail")
    detail.scroll_into_view_if_needed()
    box = detail.bounding_box()
    assert box is not None and box["width"] > 250, box
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "08c-test-email-ok-390", full_page=False)
    page.set_viewport_size({"width": 1366, "height": 900})

    # A wrong (unsaved) password: the auth step fails with a hint; nothing is stored.
    page.locator("[data-field-path='authentication.password']").get_by_role(
        "button", name="Change"
    ).click()
    control(page, "Password").fill("wrong-password-1")
    page.get_by_role("button", name="Send test e-mail").click()
    auth = page.locator("ol.steps li[data-step='auth']")
    expect(auth.locator(".badge")).to_have_text("failed", timeout=20_000)
    expect(page.locator(".test-result .banner.bad")).to_contain_text("Test failed")
    hint = page.locator(".test-result .banner.bad").inner_text()
    assert "password" in hint.lower(), hint
    page.locator(".test-result details summary").click()
    transcript = page.locator(".test-result pre").inner_text()
    assert "wrong-password-1" not in transcript and PASSWORD not in transcript
    shot(page, "09-test-email-wrong-password", full_page=False)
    assert len(smtp.received) == 1
    # The dry run with the stored settings still passes and sends nothing.
    page.get_by_role("button", name="keep the stored value").click()
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator(".test-result")).to_contain_text("Test passed", timeout=20_000)
    expect(page.locator("ol.steps li[data-step='data'] .result")).to_have_count(0)
    assert len(smtp.received) == 1


def test_test_steps_appear_as_they_complete(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    """A server that stalls after the login: the finished steps show while MAIL FROM waits."""
    smtp = smtp_servers.start(tls="starttls", users={USER: PASSWORD}, require_starttls=True)
    smtp.fail("MAIL", "hang")
    admin = mailgate.token()
    make_tenant(mailgate, admin, "stall")
    with mailgate.api(admin) as api:
        body = smtp.password_config(USER, PASSWORD, timeouts={"connect_s": 5, "command_s": 4})
        assert api.post("/api/v1/tenants/stall/email-servers", json=body).status_code == 201
    sign_in(page)
    page.goto("/ui/email-servers/DEFAULT?tenant=stall")
    page.wait_for_selector("main[data-ready='1']")
    control(page, "Send test e-mail to").fill("someone@example.com")
    page.get_by_role("button", name="Dry run").click()
    steps = page.locator("ol.steps li")
    # While MAIL FROM hangs, the first five steps are done and the sixth is running.
    expect(steps.locator(".badge")).to_have_text(["ok"] * 5, timeout=3_000)
    expect(page.locator("ol.steps li[data-step='mail_from'] .spinner")).to_have_count(1)
    shot(page, "08b-test-email-in-progress", full_page=False)
    expect(page.locator("ol.steps li[data-step='mail_from'] .badge")).to_have_text(
        "failed", timeout=15_000
    )
    expect(page.locator(".test-result .banner.bad")).to_contain_text("Test failed")


def test_oauth2_authorize_round_trip(
    browser: Any, mailgate: Mailgate, oauth_server: RunningAuthServer, smtp_servers: SmtpServers
) -> None:
    redirect = f"{mailgate.url}/settings/oauth2code"
    oauth_server.server.add_client("ui-app", "ui-app-secret", {redirect})
    live = oauth_server.server.token_is_live  # (token, user); the SMTP server asks (user, token)
    smtp = smtp_servers.start(
        tls="starttls", xoauth2=lambda user, token: live(token, user), require_starttls=True
    )
    assert smtp.pki is not None
    make_tenant(mailgate, mailgate.token(), "oauth")
    # The local authorization server's certificate comes from a test CA the browser does not
    # know; mailgate itself verifies it through MAILGATE_OAUTH_CA_BUNDLE.
    context = browser.new_context(
        base_url=mailgate.url, viewport={"width": 1366, "height": 900}, ignore_https_errors=True
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        sign_in(page)
        page.goto("/ui/email-servers?tenant=oauth")
        page.wait_for_selector("main[data-ready='1']")
        page.get_by_role("button", name="Add the first e-mail server").click()
        control(page, "Host").fill(smtp.host)
        control(page, "Port").fill(str(smtp.port))
        control(page, "Trusted CA or server certificates (PEM)").fill(smtp.pki.ca_pem)
        control(page, "OAuth2").check()
        control(page, "Provider").select_option("microsoft")
        control(page, "Grant").select_option("authorization_code")
        control(page, "Mailbox").fill(USER)
        control(page, "Directory (tenant) ID").fill("contoso-tenant")
        control(page, "Client (application) ID").fill("ui-app")
        control(page, "Client secret").fill("ui-app-secret")
        page.get_by_text("Use another redirect URI").click()  # the test server's own port
        control(page, "Redirect URI").fill(redirect)
        control(page, "From address").fill(USER)
        page.locator("#save").click()
        expect(page.locator(".toast").last).to_contain_text("Saved DEFAULT")
        status = page.locator(".oauth-status")
        expect(status).to_contain_text("not authorized")
        status.get_by_role("button", name="Authorize").scroll_into_view_if_needed()
        shot(page, "10-oauth2-not-authorized", full_page=False)

        # Authorize: the provider's consent page, then back to this page with the result.
        status.get_by_role("button", name="Authorize").click()
        page.wait_for_url(re.compile(r"^https://127\.0\.0\.1:\d+/ms/contoso-tenant/"))
        page.get_by_role("link", name="Accept").click()
        page.wait_for_url(re.compile(r"/ui/email-servers/DEFAULT\?tenant=oauth"))
        page.wait_for_selector("main[data-ready='1']")
        expect(page.locator("#flash .banner.ok")).to_contain_text("Authorized")
        expect(status.locator(".badge")).to_have_text("authorized")
        expect(status).to_contain_text(USER)
        assert "oauth2=" not in page.url  # the banner is shown once, not on reload
        shot(page, "11-oauth2-authorized", full_page=False)
        status.scroll_into_view_if_needed()
        shot(page, "11b-oauth2-status", full_page=False)

        # The stored token works: XOAUTH2 against the test SMTP server.
        control(page, "Send test e-mail to").fill("someone@example.com")
        page.get_by_role("button", name="Send test e-mail").click()
        expect(page.locator(".test-result")).to_contain_text("Test passed", timeout=20_000)
        [msg] = smtp.wait_for(1)
        assert msg.login == USER
    finally:
        context.close()
