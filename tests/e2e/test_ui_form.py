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
