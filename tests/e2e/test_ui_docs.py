"""``/docs`` without internet (issue 19 point 8): Swagger UI comes from mailgate itself."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect
from tests.e2e.conftest import Mailgate, shot


def test_docs_render_with_every_outside_request_refused(page: Any, mailgate: Mailgate) -> None:
    outside: list[str] = []

    def only_mailgate(route: Any) -> None:
        url = route.request.url
        if url.startswith(mailgate.url + "/"):
            route.continue_()
        else:  # as on a machine without internet
            outside.append(url)
            route.abort()

    page.route("**/*", only_mailgate)
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("mailgate", timeout=20_000)
    path = "/api/v1/tenants/{tenant}/messages"
    expect(page.locator(".opblock-summary-path", has_text=path).first).to_be_visible()
    shot(page, "35-offline-docs")
    assert outside == [], outside

    # ReDoc renders too; only its "API docs by Redocly" badge image is fetched from outside.
    page.goto("/redoc")
    expect(page.locator(".api-info h1").first).to_contain_text("mailgate", timeout=20_000)
    assert [u for u in outside if "logo" not in u] == [], outside
