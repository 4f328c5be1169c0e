"""Provider limits in the server form (issue 15 point 3, the UI part): one click fills the
three limits from the API's presets, Save stores them, and the choice fits a phone."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot, sign_in

pytestmark = pytest.mark.browser


def control(page: Any, label: str) -> Any:
    return page.get_by_label(label, exact=True).and_(page.locator("input, select, textarea"))


def test_microsoft_365_preset_fills_saves_and_fits_a_phone(page: Any, mailgate: Mailgate) -> None:
    with mailgate.api(mailgate.token()) as api:
        assert api.post("/api/v1/tenants", json={"name": "presets"}).status_code == 201
        body = {
            "name": "DEFAULT",
            "host": "smtp.example.com",
            "limits": {"max_connections": 7, "messages_per_minute": 200},
        }
        r = api.post("/api/v1/tenants/presets/email-servers", json=body)
        assert r.status_code == 201, r.text
    sign_in(page)
    page.goto("/ui/email-servers/DEFAULT?tenant=presets")
    page.wait_for_selector("main[data-ready='1']")

    per_day = control(page, "Recipients per day")
    expect(per_day).to_have_value("")
    group = page.get_by_role("group", name="Provider limits")
    microsoft = group.get_by_role("button", name="Microsoft 365")
    gmail = group.get_by_role("button", name="Gmail (personal account)")
    # The numbers come with the choice, as the API serves them.
    expect(microsoft).to_contain_text("30 messages/min · 3 connections · 10,000 recipients/day")
    expect(gmail).to_contain_text("20 messages/min · 2 connections · 500 recipients/day")
    expect(microsoft).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#save")).to_be_disabled()

    microsoft.click()
    expect(control(page, "Max. connections")).to_have_value("3")
    expect(control(page, "Messages per minute")).to_have_value("30")
    expect(per_day).to_have_value("10000")
    expect(microsoft).to_have_attribute("aria-pressed", "true")
    expect(gmail).to_have_attribute("aria-pressed", "false")
    page.locator("#save").click()
    expect(page.locator(".toast").last).to_contain_text("Saved DEFAULT")

    with mailgate.api(mailgate.token()) as api:
        limits = api.get("/api/v1/tenants/presets/email-servers/DEFAULT").json()["limits"]
    keys = ("max_connections", "messages_per_minute", "recipients_per_day")
    assert {k: limits[k] for k in keys} == {
        "max_connections": 3,
        "messages_per_minute": 30,
        "recipients_per_day": 10_000,
    }

    # Reopened: the stored limits are Microsoft's, so that choice shows as the one in use;
    # a changed number no longer matches it.
    page.reload()
    page.wait_for_selector("main[data-ready='1']")
    expect(microsoft).to_have_attribute("aria-pressed", "true")
    control(page, "Recipients per day").fill("9000")
    expect(microsoft).to_have_attribute("aria-pressed", "false")
    control(page, "Recipients per day").fill("10000")

    # On a phone the choice is on screen, nothing scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    group.scroll_into_view_if_needed()
    shot(page, "40-limit-presets-390")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for button in (microsoft, gmail):
        box = button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    assert group.evaluate("e => e.scrollWidth <= e.clientWidth")
