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
