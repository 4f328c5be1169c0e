"""The server form's certificates and lifecycle in a real browser (issue 19 points 3 and 5)."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.smtp_fixtures import SmtpServers


def control(page: Any, label: str) -> Any:
    return page.get_by_label(label, exact=True).and_(page.locator("input, select, textarea"))


def make_tenant(mailgate: Mailgate, name: str) -> None:
    with mailgate.api(mailgate.token()) as api:
        r = api.post("/api/v1/tenants", json={"name": name})
        assert r.status_code == 201, r.text


def open_servers(page: Any, tenant: str, server: str = "") -> None:
    page.goto(
        f"/ui/email-servers/{server}?tenant={tenant}"
        if server
        else f"/ui/email-servers?tenant={tenant}"
    )
    page.wait_for_selector("main[data-ready='1']")


def test_mutual_tls_key_upload_validated_and_used(
    page: Any, mailgate: Mailgate, smtp_servers: SmtpServers
) -> None:
    smtp = smtp_servers.start(tls="starttls", require_client_cert=True, require_starttls=True)
    assert smtp.pki is not None
    pki = smtp.pki
    make_tenant(mailgate, "mtls")
    sign_in(page)
    open_servers(page, "mtls")
    page.get_by_role("button", name="Add the first e-mail server").click()
    control(page, "Host").fill(smtp.host)
    control(page, "Port").fill(str(smtp.port))
    control(page, "Trusted CA or server certificates (PEM)").fill(pki.ca_pem)
    control(page, "Client certificate (PEM)").fill(pki.client_cert_pem)
    control(page, "From address").fill("noreply@example.com")

    # A key whose line breaks were lost (as a one-line field used to make it): refused at
    # Save, at the key's field, because OpenSSL, which delivery uses, cannot load it.
    key = control(page, "Client key (PEM)")
    expect(key).to_have_js_property("tagName", "TEXTAREA")
    key.fill(pki.client_key_pem.replace("\n", ""))
    page.locator("#save").click()
    field = page.locator("[data-field-path='tls.client_key_pem']")
    expect(field).to_have_class("field wide invalid")
    expect(field.locator(".field-error")).to_contain_text("OpenSSL cannot load this key")
    shot(page, "25-client-key-refused")

    # The key file uploaded: line breaks kept, saved, and the test connects with it.
    page.locator("[data-field-path='tls.client_key_pem'] input[type=file]").set_input_files(
        files=[
            {
                "name": "client.key",
                "mimeType": "application/x-pem-file",
                "buffer": pki.client_key_pem.encode(),
            }
        ]
    )
    expect(key).to_have_value(pki.client_key_pem)
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_contain_text("Saved DEFAULT")
    expect(field).to_contain_text("set")
    assert "PRIVATE KEY" not in page.locator("form.server-form").inner_text()
    control(page, "Send test e-mail to").fill("someone@example.com")
    page.locator(".test-row button.primary").click()
    expect(page.locator(".test-result")).to_contain_text("Test passed", timeout=20_000)
    [msg] = smtp.wait_for(1)
    assert msg.tls


def names(mailgate: Mailgate, tenant: str) -> dict[str, bool]:
    with mailgate.api(mailgate.token()) as api:
        items = api.get(f"/api/v1/tenants/{tenant}/email-servers").json()["items"]
    return {s["name"]: s["is_default"] for s in items}


def test_lifecycle_intro_discard_enter_duplicate_rename_and_default_removal(
    page: Any, mailgate: Mailgate
) -> None:
    make_tenant(mailgate, "life")
    sign_in(page)
    open_servers(page, "life")
    tabs = page.locator("[role=tab] .tab-label")

    # An empty tenant gets an intro, not an unexplained draft.
    expect(page.get_by_role("heading", name="No e-mail server yet")).to_be_visible()
    expect(tabs).to_have_count(0)
    expect(page.locator(".savebar")).to_be_hidden()
    shot(page, "26-empty-tenant-intro")
    page.get_by_role("button", name="Add the first e-mail server").click()
    expect(control(page, "Name")).to_have_value("DEFAULT")

    # "Discard new server" drops the draft at once; nothing is staged, nothing "Saved.".
    control(page, "Host").fill("smtp.example.com")
    page.get_by_role("button", name="Discard new server").click()
    page.get_by_role("dialog").get_by_role("button", name="Discard").click()
    expect(page.get_by_role("heading", name="No e-mail server yet")).to_be_visible()
    expect(page.locator(".banner.ok")).to_have_count(0)
    assert names(mailgate, "life") == {}

    # Enter in a field saves; one confirmation only.
    page.get_by_role("button", name="Add the first e-mail server").click()
    control(page, "Host").fill("smtp.example.com")
    control(page, "Host").press("Enter")
    expect(page.locator(".toast")).to_have_text(["Saved DEFAULT"])
    expect(page.locator(".form-banner .banner")).to_have_count(0)
    assert names(mailgate, "life") == {"DEFAULT": True}

    # A duplicate name is shown at the Name field.
    page.get_by_role("button", name="New configuration").click()
    control(page, "Name").fill("DEFAULT")
    control(page, "Host").fill("smtp.example.com")
    page.locator("#save").click()
    name_field = page.locator("[data-field-path='name']")
    expect(name_field).to_have_class("field invalid")
    expect(name_field.locator(".field-error")).to_contain_text("exists already")
    control(page, "Name").fill("second")
    # A stale "Not saved" does not outlive the next attempt.
    control(page, "Host").fill("")
    page.locator("#save").click()
    expect(page.locator(".toast.bad").last).to_contain_text("Not saved")
    control(page, "Host").fill("smtp.example.com")
    page.locator("#save").click()
    expect(page.locator(".toast")).to_have_text(["Saved second"])

    # Renaming warns that workflows send by name.
    control(page, "Name").fill("third")
    warning = page.locator(".banner.warn", has_text="Renaming")
    expect(warning).to_contain_text('send with server "second"')
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_have_text("Saved third")
    expect(warning).to_be_hidden()
    assert names(mailgate, "life") == {"DEFAULT": True, "third": False}

    # Removing the default asks for the new default in the same flow.
    page.get_by_role("tab", name="DEFAULT").click()
    page.get_by_role("button", name="Remove server").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("default server")
    expect(dialog.get_by_label("New default server")).to_have_value("third")
    shot(page, "27-remove-default-choose-successor")
    dialog.get_by_role("button", name="Make it the default and remove").click()
    expect(page.locator(".form-banner")).to_contain_text('"third" becomes the default')
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_contain_text("third is the default now")
    expect(tabs).to_have_text(["third"])
    assert names(mailgate, "life") == {"third": True}

    # A draft beside saved servers is discarded back to them.
    page.get_by_role("button", name="New configuration").click()
    control(page, "Name").fill("scratch")
    page.get_by_role("button", name="Discard new server").click()
    page.get_by_role("dialog").get_by_role("button", name="Discard").click()
    expect(tabs).to_have_text(["third"])
    assert names(mailgate, "life") == {"third": True}


TRUNCATED_SELECTS = """form => [...form.querySelectorAll('select')]
.filter(s => s.offsetParent).filter(s => {
  const c = document.createElement('canvas').getContext('2d');
  const st = getComputedStyle(s);
  c.font = `${st.fontWeight} ${st.fontSize} ${st.fontFamily}`;
  const text = s.options[s.selectedIndex]?.text || '';
  const room = s.clientWidth - parseFloat(st.paddingLeft) - parseFloat(st.paddingRight) - 18;
  return c.measureText(text).width > room;
}).map(s => s.name + ': ' + s.options[s.selectedIndex]?.text)"""


def test_small_things_plain_text_warning_selects_and_wording(page: Any, mailgate: Mailgate) -> None:
    make_tenant(mailgate, "small")
    sign_in(page)
    open_servers(page, "small")
    page.get_by_role("button", name="Add the first e-mail server").click()
    expect(page.get_by_role("button", name="Send test e-mail", exact=True)).to_be_visible()
    # The protocol's label promises nothing the other fields may contradict.
    assert control(page, "Protocol").locator("option").all_inner_texts() == [
        "SMTP",
        "SMTPS (implicit TLS)",
    ]
    # A password that could travel without TLS is pointed out.
    control(page, "User and password").check()
    warning = page.locator(".plain-warning")
    expect(warning).to_be_hidden()
    control(page, "STARTTLS").select_option("disabled")
    expect(warning).to_contain_text("password travels over the network in plain text")
    control(page, "STARTTLS").select_option("opportunistic")
    expect(warning).to_contain_text("can travel")
    control(page, "Protocol").select_option("smtps")
    expect(warning).to_be_hidden()
    control(page, "Protocol").select_option("smtp")
    control(page, "STARTTLS").select_option("required")
    expect(warning).to_be_hidden()
    # No select box cuts off its chosen value, on a desktop or a phone.
    control(page, "OAuth2").check()
    control(page, "Provider").select_option("microsoft")
    control(page, "Grant").select_option("client_credentials")
    for size in ({"width": 1366, "height": 900}, {"width": 390, "height": 844}):
        page.set_viewport_size(size)
        for value in ("required", "opportunistic", "disabled"):
            control(page, "STARTTLS").select_option(value)
            cut = page.locator("form.server-form").evaluate(TRUNCATED_SELECTS)
            assert cut == [], (size, cut)

    # Users: the actions column has a header.
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto("/ui/users")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("table th").last).to_have_text("Actions")

    # Remote clients: the token goes in the environment, not on the command line.
    with mailgate.api(mailgate.token()) as api:
        api.put("/api/v1/system/settings", json={"allow_remote_clients": True})
    page.goto("/ui/remote-clients?tenant=small")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("form")).not_to_contain_text("--token TOKEN")
    control(page, "Name").fill("plant-9")
    page.get_by_role("button", name="Create remote client").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("MAILGATE_AGENT_TOKEN")
    expect(dialog).not_to_contain_text("mailgate agent --token")
    dialog.get_by_role("button", name="I have stored it").click()


def test_my_account_changes_the_own_password(page: Any, mailgate: Mailgate) -> None:
    with mailgate.api(mailgate.token()) as api:
        user = {"username": "myself", "password": "my-first-pass-1", "email": "me@example.com"}
        assert (
            api.post("/api/v1/users", json={**user, "roles": {"home": "user"}}).status_code == 201
        )
    sign_in(page, "myself", "my-first-pass-1")
    page.get_by_role("link", name="myself").click()
    page.wait_for_selector("main[data-ready='1']")
    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page.locator("dl.kv")).to_contain_text("me@example.com")
    expect(page.locator("dl.kv")).to_contain_text("home: User")
    control(page, "Current password").fill("not-my-password")
    control(page, "New password").fill("my-second-pass-2")
    control(page, "Repeat the new password").fill("my-second-pass-3")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator("[data-field-path='new_password_again'] .field-error")).to_have_text(
        "the two new passwords differ"
    )
    control(page, "Repeat the new password").fill("my-second-pass-2")
    page.get_by_role("button", name="Change password").click()
    expect(page.locator("[data-field-path='current_password'] .field-error")).to_contain_text(
        "not your current password"
    )
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "28-my-account-390")
    control(page, "Current password").fill("my-first-pass-1")
    page.get_by_role("button", name="Change password").click()
    page.wait_for_url("**/ui/login?password=changed")
    expect(page.locator(".banner.ok")).to_contain_text("Your password was changed")
    sign_in(page, "myself", "my-second-pass-2")
