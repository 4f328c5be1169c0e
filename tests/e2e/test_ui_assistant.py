"""The server form's transport choice and OAuth2 setup assistant in a real browser (issue 16
point 5, issue 19 point 1): what each transport hides, the provider's steps with the values
to copy, the prefilled connection, the fields of the chosen grant, and the check of what is
missing before "Authorize" is offered."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect
from tests.api_peers import ApiPeers
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.oauth_server import RunningAuthServer

MAILBOX = "sender@contoso.com"


def control(page: Any, label: str) -> Any:
    return page.get_by_label(label, exact=True).and_(page.locator("input, select, textarea"))


def make_tenant(mailgate: Mailgate, name: str) -> None:
    with mailgate.api(mailgate.token()) as api:
        r = api.post("/api/v1/tenants", json={"name": name})
        assert r.status_code == 201, r.text


def open_servers(page: Any, tenant: str) -> None:
    """The servers page of a new tenant, with its first configuration started."""
    page.goto(f"/ui/email-servers?tenant={tenant}")
    page.wait_for_selector("main[data-ready='1']")
    page.get_by_role("button", name="Add the first e-mail server").click()


def guide(page: Any) -> Any:
    return page.locator(".guide-box details.setup")


def test_transport_choice_hides_smtp_fields_and_sends_through_graph(
    browser: Any, mailgate: Mailgate, oauth_server: RunningAuthServer, api_peers: ApiPeers
) -> None:
    oauth_server.server.add_client("graph-app", "graph-secret", app_mailboxes={MAILBOX})
    api_peers.graph.mailboxes.add(MAILBOX)
    make_tenant(mailgate, "graphui")
    context = browser.new_context(
        base_url=mailgate.url, viewport={"width": 1366, "height": 900}, locale="en-GB"
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        sign_in(page)
        open_servers(page, "graphui")

        # The transport is the first choice of the form; SMTP shows the SMTP fields.
        first = page.locator("form.server-form section.panel").first
        expect(first.locator("h2")).to_have_text("Transport")
        expect(control(page, "SMTP")).to_be_checked()
        for label in (
            "Host",
            "Port",
            "STARTTLS",
            "Protocol",
            "Verify the server certificate and host name",
        ):
            expect(control(page, label)).to_be_visible()

        # Microsoft Graph: what only SMTP uses disappears, OAuth2 at Microsoft is fixed.
        control(page, "Microsoft Graph").check()
        for label in (
            "Host",
            "Port",
            "STARTTLS",
            "Protocol",
            "Client key (PEM)",
            "HELO/EHLO name",
            "Provider",
            "OAuth2",
        ):
            expect(control(page, label)).to_be_hidden()
        expect(
            page.locator("section", has=page.get_by_role("heading", name="Certificates"))
        ).to_be_hidden()
        expect(
            page.locator("section", has=page.get_by_role("heading", name="Remote output"))
        ).to_be_hidden()
        expect(page.get_by_text("signs in with OAuth2 at Microsoft")).to_be_visible()
        expect(control(page, "Max. connections")).to_be_visible()  # limits apply to every transport

        # The checklist for delegated Graph: redirect URI and the permissions to copy.
        control(page, "Grant").select_option("authorization_code")
        steps = guide(page)
        expect(steps.locator("summary")).to_have_text(
            "Set up at Microsoft (Microsoft Graph, delegated)"
        )
        default_redirect = "http://localhost:8086/settings/oauth2code"  # MAILGATE_PUBLIC_BASE_URL's
        expect(steps).to_contain_text("Delegated permissions")
        expect(steps.locator("code")).to_contain_text(
            [default_redirect, "Mail.Send", "offline_access"]
        )
        expect(steps).not_to_contain_text("Set-CASMailbox")  # Graph needs no SMTP AUTH
        expect(page.locator(".redirect-box code")).to_have_text(default_redirect)
        steps.get_by_role("button", name="Copy: Mail.Send").click()
        assert page.evaluate("navigator.clipboard.readText()") == "Mail.Send"
        shot(page, "20-transport-graph-delegated", full_page=True)
        page.locator("section", has=page.get_by_role("heading", name="Authentication")).evaluate(
            "e => e.scrollIntoView({block: 'start'})"
        )
        shot(page, "20b-assistant-graph-delegated")

        # App-only: no redirect URI anywhere, application permission, RBAC for Applications.
        control(page, "Grant").select_option("client_credentials")
        expect(page.locator(".redirect-box")).to_be_hidden()
        expect(control(page, "Redirect URI")).to_be_hidden()
        expect(steps.locator("summary")).to_have_text(
            "Set up at Microsoft (Microsoft Graph, app-only)"
        )
        expect(steps).to_contain_text("Application permissions")
        expect(steps).not_to_contain_text(default_redirect)
        control(page, "Mailbox").fill(MAILBOX)
        control(page, "Client (application) ID").fill("graph-app")
        expect(steps.locator("code", has_text="New-ManagementRoleAssignment")).to_have_text(
            'New-ManagementRoleAssignment -App graph-app -Role "Application Mail.Send" '
            '-CustomResourceScope "mailgate senders"'
        )
        expect(steps.locator("code", has_text="New-ManagementScope")).to_contain_text(MAILBOX)

        # What is missing before a token can be fetched; nothing to press yet.
        preflight = page.locator(".preflight")
        expect(preflight.locator("li")).to_have_text(
            ["Directory (tenant) ID is missing", "Client secret is missing"]
        )
        expect(page.get_by_role("button", name="Get a token now")).to_have_count(0)
        preflight.get_by_role("button", name="Client secret").click()
        expect(control(page, "Client secret")).to_be_focused()
        control(page, "Client secret").fill("graph-secret")
        control(page, "Directory (tenant) ID").fill("contoso-tenant")
        expect(preflight.locator("li")).to_have_text(["Save the configuration (Save below)"])
        control(page, "From address").fill(MAILBOX)
        page.locator("#save").click()
        expect(page.locator(".toast").last).to_contain_text("Saved DEFAULT")
        with mailgate.api(mailgate.token()) as api:
            saved = api.get("/api/v1/tenants/graphui/email-servers/DEFAULT").json()
        assert saved["transport"] == "microsoft_graph" and saved["host"] is None
        assert saved["authentication"]["provider"] == "microsoft"
        assert saved["authentication"]["redirect_uri"] is None

        # After a reload the form opens on Graph, and the token comes without a browser step.
        page.reload()
        page.wait_for_selector("main[data-ready='1']")
        expect(control(page, "Microsoft Graph")).to_be_checked()
        expect(control(page, "Host")).to_be_hidden()
        page.get_by_role("button", name="Get a token now").click()
        expect(page.locator(".oauth-status .badge")).to_have_text("authorized")

        # The test e-mail reports the API's steps (token, send) and reaches the Graph peer.
        control(page, "Send test e-mail to").fill("someone@example.com")
        page.locator(".test-row").get_by_role(
            "button", name=re.compile("Send test e-?mail")
        ).click()
        expect(page.locator("ol.steps li .name")).to_have_text(["token", "send"])
        expect(page.locator("ol.steps li .badge")).to_have_count(2, timeout=20_000)
        expect(page.locator("ol.steps li .badge")).to_have_text(["ok", "ok"], timeout=20_000)
        expect(page.locator(".test-result")).to_contain_text(
            "The provider accepted the test e-mail"
        )
        [delivered] = api_peers.graph.wait_for(1)
        assert delivered.mailbox == MAILBOX
        shot(page, "21-transport-graph-tested")

        # Gmail API: Google only knows the authorization code grant; its scope is gmail.send.
        page.get_by_role("button", name="New configuration").click()
        control(page, "Name").fill("gmail")
        control(page, "Gmail API").check()
        expect(control(page, "Grant")).to_be_hidden()
        expect(guide(page).locator("summary")).to_have_text(
            "Set up at Google (Gmail API, delegated)"
        )
        expect(guide(page).locator("code")).to_contain_text(
            ["https://www.googleapis.com/auth/gmail.send", default_redirect]
        )
        expect(guide(page)).to_contain_text("Enable the Gmail API")
        # On a tablet and a phone the steps and the values to copy stay inside the form.
        for width, height in ((800, 1000), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            guide(page).scroll_into_view_if_needed()
            shot(page, f"23-transport-gmail-{width}")
            overflow = page.locator("form.server-form").evaluate(
                "f => [...f.querySelectorAll('.guide-box, .redirect-box, .choices')]"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.className)"
            )
            assert overflow == [], (width, overflow)
        page.set_viewport_size({"width": 1366, "height": 900})
        # Back to SMTP: the SMTP fields return.
        control(page, "SMTP").check()
        expect(control(page, "Host")).to_be_visible()
    finally:
        context.close()
    assert not errors, errors


def test_oauth2_assistant_for_smtp_prefills_and_checks(page: Any, mailgate: Mailgate) -> None:
    make_tenant(mailgate, "assist")
    sign_in(page)
    open_servers(page, "assist")
    control(page, "OAuth2").check()
    # Nothing chosen yet: the check says what is missing, and there is no Authorize button.
    preflight = page.locator(".preflight")
    expect(preflight).to_contain_text("Provider is missing")
    expect(page.get_by_role("button", name="Authorize")).to_have_count(0)

    # Microsoft prefills Exchange Online's SMTP service.
    control(page, "Provider").select_option("microsoft")
    expect(control(page, "Host")).to_have_value("smtp.office365.com")
    expect(control(page, "Port")).to_have_value("587")
    expect(control(page, "STARTTLS")).to_have_value("required")
    control(page, "Grant").select_option("authorization_code")
    control(page, "Mailbox").fill(MAILBOX)
    steps = guide(page)
    expect(steps.locator("summary")).to_have_text("Set up at Microsoft (SMTP, delegated)")
    expect(steps.locator("code", has_text="Set-CASMailbox")).to_have_text(
        f"Set-CASMailbox -Identity {MAILBOX} -SmtpClientAuthenticationDisabled $false"
    )
    expect(steps.locator("code")).to_contain_text(["SMTP.Send", "offline_access"])

    # App-only SMTP: the app's Exchange registration too; long lines stay inside on a phone.
    control(page, "Grant").select_option("client_credentials")
    expect(steps.locator("code", has_text="Add-MailboxPermission")).to_contain_text(MAILBOX)
    expect(steps.locator("code")).to_contain_text(["SMTP.SendAsApp"])
    page.set_viewport_size({"width": 390, "height": 844})
    steps.scroll_into_view_if_needed()
    shot(page, "22b-assistant-smtp-app-only-390")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert steps.evaluate("e => e.scrollWidth <= e.clientWidth")
    page.set_viewport_size({"width": 1366, "height": 900})
    control(page, "Grant").select_option("authorization_code")

    # Another redirect URI: the box and the steps show the one to register.
    page.get_by_text("Use another redirect URI").click()
    control(page, "Redirect URI").fill("https://mail.example.com/settings/oauth2code")
    expect(page.locator(".redirect-box code")).to_have_text(
        "https://mail.example.com/settings/oauth2code"
    )
    expect(steps.locator("code").first).to_have_text("https://mail.example.com/settings/oauth2code")

    # Google: smtp.gmail.com replaces the Microsoft preset, the grant is fixed.
    control(page, "Provider").select_option("google")
    expect(control(page, "Host")).to_have_value("smtp.gmail.com")
    expect(control(page, "Grant")).to_be_hidden()
    expect(steps.locator("code")).to_contain_text(["https://mail.google.com/"])
    # A host the person typed is never overwritten by a preset.
    control(page, "Host").fill("relay.example.com")
    control(page, "Provider").select_option("microsoft")
    expect(control(page, "Host")).to_have_value("relay.example.com")

    # Errors from the API read as errors, at their fields.
    page.locator("#save").click()
    invalid = page.locator(".field.invalid:visible")
    expect(invalid.first).to_be_visible()
    client_id = page.locator("[data-field-path='authentication.client_id']")
    expect(client_id).to_have_class(re.compile("invalid"))
    expect(client_id.locator("input")).to_have_attribute("aria-invalid", "true")
    color = client_id.locator(".field-error").evaluate("e => getComputedStyle(e).color")
    assert color == "rgb(179, 38, 30)", color  # --bad
    shot(page, "22-oauth2-assistant-errors", full_page=True)


def test_oauth2_callback_failure_is_a_page_with_the_way_back(
    browser: Any, mailgate: Mailgate, oauth_server: RunningAuthServer
) -> None:
    redirect = f"{mailgate.url}/settings/oauth2code"
    oauth_server.server.add_client("cb-app", "cb-secret", {redirect})
    make_tenant(mailgate, "callback")
    admin = mailgate.token()
    with mailgate.api(admin) as api:
        body = {
            "name": "DEFAULT",
            "transport": "microsoft_graph",
            "authentication": {
                "method": "oauth2",
                "provider": "microsoft",
                "grant": "authorization_code",
                "username": MAILBOX,
                "directory_tenant_id": "contoso",
                "client_id": "cb-app",
                "client_secret": "cb-secret",
                "redirect_uri": redirect,
            },
        }
        assert api.post("/api/v1/tenants/callback/email-servers", json=body).status_code == 201
        url = api.post("/api/v1/tenants/callback/email-servers/DEFAULT/oauth2/authorize").json()[
            "authorization_url"
        ]
        # The flow is bound to the browser that started it (its cookie): hand it over.
        flow = [
            {"name": k, "value": v, "url": f"{mailgate.url}/settings/oauth2code"}
            for k, v in api.cookies.items()
            if k.startswith("mailgate_oauth2_")
        ]
    back = oauth_server.consent(url)  # the provider's redirect: mailgate's callback with a code
    context = browser.new_context(base_url=mailgate.url, viewport={"width": 390, "height": 844})
    context.add_cookies(flow)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        sign_in(page)
        # An unknown state: a page in the UI's style, 400, and the way to the servers.
        r = page.goto("/settings/oauth2code?state=made-up&code=x")
        assert r is not None and r.status == 400
        expect(page.get_by_role("heading", name="Authorization not completed")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("Unknown or already used OAuth2 state")
        assert "problem" not in (r.headers.get("content-type") or "")
        expect(page.get_by_role("link", name="Back to your e-mail servers")).to_have_attribute(
            "href", "/ui/email-servers"
        )
        # The real callback authorizes; the same link a second time names its server.
        page.goto(back)
        page.wait_for_selector("main[data-ready='1']")
        expect(page.locator("#flash .banner.ok")).to_contain_text("Authorized")
        r = page.goto(back)
        assert r is not None and r.status == 400
        expect(page.get_by_role("alert")).to_contain_text("already used")
        shot(page, "24-oauth2-callback-failed-390")
        page.get_by_role("link", name="Back to e-mail server DEFAULT").click()
        page.wait_for_selector("main[data-ready='1']")
        expect(page.locator(".oauth-status .badge")).to_have_text("authorized")
    finally:
        context.close()
    # Scripts asking for JSON still get the problem document.
    with mailgate.api() as api:
        r = api.get("/settings/oauth2code", params={"state": "made-up", "code": "x"})
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("application/problem+json")


def test_saving_in_the_form_keeps_endpoint_overrides_made_through_the_api(
    page: Any, mailgate: Mailgate
) -> None:
    make_tenant(mailgate, "overrides")
    base = "/api/v1/tenants/overrides/email-servers"
    auth = {
        "method": "oauth2",
        "provider": "microsoft",
        "grant": "client_credentials",
        "username": MAILBOX,
        "directory_tenant_id": "contoso",
        "client_id": "app",
        "client_secret": "secret",
        "token_url": "https://login.example.com/token",
        "scope": "https://outlook.office365.com/.default",
    }
    with mailgate.api(mailgate.token()) as api:
        body = {"name": "DEFAULT", "host": "smtp.office365.com", "authentication": auth}
        assert api.post(base, json=body).status_code == 201
    sign_in(page)
    page.goto("/ui/email-servers/DEFAULT?tenant=overrides")
    page.wait_for_selector("main[data-ready='1']")
    control(page, "Subject").fill("kept")
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_contain_text("Saved DEFAULT")
    with mailgate.api(mailgate.token()) as api:
        saved = api.get(f"{base}/DEFAULT").json()["authentication"]
    assert saved["token_url"] == "https://login.example.com/token"
    assert saved["scope"] == "https://outlook.office365.com/.default"
    # Switching to another provider drops what belonged to the old one.
    control(page, "Provider").select_option("google")
    expect(control(page, "Host")).to_have_value("smtp.gmail.com")  # the preset follows
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_contain_text("Saved DEFAULT")
    with mailgate.api(mailgate.token()) as api:
        saved = api.get(f"{base}/DEFAULT").json()["authentication"]
    assert saved["provider"] == "google" and saved["token_url"] is None and saved["scope"] is None
