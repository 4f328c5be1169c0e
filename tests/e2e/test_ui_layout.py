"""Layout in a real browser at a phone's and a tablet's width (issue 19 point 4): nothing
scrolls sideways, the header keeps Sign out on screen, the ribbon's "+" stays reachable, the
messages table shows its Server column, and keyboard focus never hides under the sticky
save bar (which is opaque)."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in
from tests.e2e.test_ui_form import TRUNCATED_SELECTS

PHONE = {"width": 390, "height": 844}
TABLET = {"width": 800, "height": 1000}


def setup_tenant(mailgate: Mailgate, name: str, display_name: str, messages: int = 0) -> None:
    with mailgate.api(mailgate.token()) as api:
        r = api.post("/api/v1/tenants", json={"name": name, "display_name": display_name})
        assert r.status_code == 201, r.text
        server = {"name": "DEFAULT", "host": "smtp.invalid", "port": 2525}
        r = api.post(f"/api/v1/tenants/{name}/email-servers", json=server)
        assert r.status_code == 201, r.text
        r = api.post(
            f"/api/v1/tenants/{name}/email-servers",
            json={**server, "name": "a-rather-long-server-name"},
        )
        assert r.status_code == 201, r.text
        for i in range(messages):
            msg = {
                "server": "a-rather-long-server-name",
                "from": "accounts-receivable@example-company.com",
                "to": [f"a-customer-with-a-long-address-{i}@customer-domain.example"],
                "subject": f"Invoice {i} for the order of last month",
                "text": "hello",
                "hold": True,
            }
            r = api.post(f"/api/v1/tenants/{name}/messages", json=msg)
            assert r.status_code == 202, r.text


def no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    inner = page.evaluate("window.innerWidth")
    assert width <= inner, f"the page scrolls sideways: {width} > {inner} on {page.url}"


def inside_viewport(page: Any, locator: Any) -> None:
    box = locator.bounding_box()
    assert box is not None
    vw = page.viewport_size["width"]
    assert box["x"] >= 0 and box["x"] + box["width"] <= vw, (box, vw)


def test_phone_layout_header_ribbon_and_pages(page: Any, mailgate: Mailgate) -> None:
    setup_tenant(mailgate, "phone", "Phone Company Ltd", messages=3)
    page.set_viewport_size(PHONE)
    sign_in(page)
    page.goto("/ui/email-servers?tenant=phone")
    page.wait_for_selector("main[data-ready='1']")
    no_sideways_scroll(page)
    inside_viewport(page, page.get_by_role("button", name="Sign out"))
    inside_viewport(page, page.get_by_label("Tenant", exact=True))
    add = page.get_by_role("button", name="New configuration")
    add.scroll_into_view_if_needed()
    inside_viewport(page, add)
    add.click()  # reachable and working, even with long tab names beside it
    expect(page.locator("[role=tab] .tab-label")).to_have_count(3)
    shot(page, "30-phone-servers")

    for path in (
        "messages",
        "api-keys",
        "remote-clients",
        "webhooks",
        "audit",
        "users",
        "tenants",
        "system-email-server",
        "system-settings",
        "account",
    ):
        page.goto(f"/ui/{path}?tenant=phone")
        page.wait_for_selector("main[data-ready='1']")
        no_sideways_scroll(page)
        inside_viewport(page, page.get_by_role("button", name="Sign out"))
        shot(page, f"30-phone-{path}")
        cut = page.locator("main").evaluate(TRUNCATED_SELECTS)
        assert cut == [], (path, cut)  # no select box cuts off its value
        if path == "messages":
            # A phone shows each message as a card that includes its server.
            server = page.locator("table.messages td[data-label='Server']").first
            expect(server).to_have_text("a-rather-long-server-name")
            expect(server).to_be_visible()
            inside_viewport(page, server)
            shot(page, "31-phone-messages")

    # The menu opens over the page and reaches every page.
    page.get_by_role("button", name="Menu").click()
    expect(page.get_by_role("link", name="Users")).to_be_visible()
    shot(page, "32-phone-menu")


def test_tablet_messages_table_shows_every_column(page: Any, mailgate: Mailgate) -> None:
    setup_tenant(mailgate, "tablet", "Tablet Co", messages=3)
    page.set_viewport_size(TABLET)
    sign_in(page)
    page.goto("/ui/messages?tenant=tablet")
    page.wait_for_selector("main[data-ready='1']")
    expect(page.locator("table.messages tbody tr")).to_have_count(3)
    no_sideways_scroll(page)
    wrap = page.locator(".table-wrap")
    assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth"), "the table scrolls sideways"
    for header in page.locator("table.messages th").all():
        inside_viewport(page, header)
    inside_viewport(page, page.locator("table.messages td.server").first)
    shot(page, "33-tablet-messages")


def test_focus_stays_clear_of_the_sticky_save_bar(page: Any, mailgate: Mailgate) -> None:
    setup_tenant(mailgate, "focus", "Focus GmbH")
    for viewport in ({"width": 1366, "height": 900}, TABLET, PHONE):
        page.set_viewport_size(viewport)
        sign_in(page)
        page.goto("/ui/email-servers/DEFAULT?tenant=focus")
        page.wait_for_selector("main[data-ready='1']")
        savebar = page.locator(".savebar")
        bg = savebar.evaluate("e => getComputedStyle(e).backgroundColor")
        assert bg in ("rgb(255, 255, 255)", "rgba(255, 255, 255, 1)"), bg  # opaque
        page.locator("form.server-form input[type=radio]").first.focus()
        hidden = []
        for _ in range(45):  # through the form with the keyboard
            page.keyboard.press("Tab")
            where = page.evaluate(
                """() => {
                  const e = document.activeElement;
                  if (!e || !e.closest('form.server-form')) return null;
                  const r = e.getBoundingClientRect();
                  const bar = document.querySelector('.savebar').getBoundingClientRect();
                  const top = document.querySelector('.topbar').getBoundingClientRect();
                  return {name: e.name || e.id || e.textContent.trim().slice(0, 30),
                          under: r.bottom > bar.top + 1 || r.top < top.bottom - 1};
                }"""
            )
            if where and where["under"]:
                hidden.append(where["name"])
        assert not hidden, f"focused but hidden under a sticky bar at {viewport}: {hidden}"
    shot(page, "34-phone-focus")


def test_tenant_display_name_in_the_header(page: Any, mailgate: Mailgate) -> None:
    setup_tenant(mailgate, "named", "Named Trading A/S")
    with mailgate.api(mailgate.token()) as api:
        user = {"username": "named-admin", "password": "named-pass-1", "roles": {"named": "admin"}}
        assert api.post("/api/v1/users", json=user).status_code == 201
    sign_in(page, "named-admin", "named-pass-1")
    expect(page.locator("#tenant-single")).to_have_text("Named Trading A/S (named)")
    page.set_viewport_size(PHONE)
    no_sideways_scroll(page)
    inside_viewport(page, page.get_by_role("button", name="Sign out"))
