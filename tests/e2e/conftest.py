"""Browser tests: Debian's Chromium driven by Playwright against a real ``mailgate serve``.

One server process (SQLite in a temporary data directory, ephemeral port) serves the whole
session and one browser each run of consecutive browser tests; each test gets a fresh browser
context (its own cookies). Without
/usr/bin/chromium the tests skip, except with CI=true where they fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api_peers import ApiPeers
from tests.conftest import ADMIN_PASSWORD, IN_CI
from tests.live_server import serve_process
from tests.oauth_server import RunningAuthServer

CHROMIUM = Path("/usr/bin/chromium")
# Port 0: the OS picks a free port; the test reads it from uvicorn's start-up line.
SERVE_ARGS = ("--host", "127.0.0.1", "--port", "0")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``browser`` every test that drives Chromium (through the ``browser`` fixture), so
    ``-m browser`` and ``-m "not browser"`` select them: a conftest's ``pytestmark`` marks
    nothing."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


@dataclass
class Mailgate:
    url: str
    data_dir: Path
    log: list[str]

    def api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def token(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        with self.api() as client:
            r = client.post("/api/v1/auth/login", json={"username": username, "password": password})
            r.raise_for_status()
            token: str = r.json()["token"]
            return token


@pytest.fixture(scope="session")
def mailgate(
    tmp_path_factory: pytest.TempPathFactory,
    _oauth_server_running: RunningAuthServer,
    _api_peers_running: ApiPeers,
) -> Iterator[Mailgate]:
    data = tmp_path_factory.mktemp("mailgate-ui")
    env = {
        **os.environ,
        "MAILGATE_DATA_DIR": str(data),
        "MAILGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MAILGATE_LOG_LEVEL": "INFO",
        # Any free port: the default 2587 may be another test's or another installation's.
        "MAILGATE_SMTP_LISTEN": "127.0.0.1:0",
        # The webhook tests' receiver listens on 127.0.0.1.
        "MAILGATE_WEBHOOK_ALLOW_PRIVATE": "true",
        # Real Argon2id at its cheapest: every sign-in hashes, and the cost (64 MiB, 3 passes
        # by default) is not what the UI tests are about.
        "MAILGATE_PASSWORD_HASH_TIME_COST": "1",
        "MAILGATE_PASSWORD_HASH_MEMORY_KIB": "64",
    }
    # OAuth2 providers are the local authorization server (tests/oauth_server.py).
    # and the Graph and Gmail API servers are the suite's own (tests/api_peers.py).
    for key, value in {**_oauth_server_running.settings(), **_api_peers_running.settings()}.items():
        env[f"MAILGATE_{key.upper()}"] = str(value)
    env.pop("MAILGATE_DATABASE_URL", None)
    with serve_process(list(SERVE_ARGS), env, data, stop_timeout_s=10) as (url, log, _proc):
        yield Mailgate(url, data, log)


class _Chromium:
    """One Chromium for a run of consecutive tests that drive it (the UI modules follow each
    other), launched when the first needs it and closed after the last: Playwright's sync API
    keeps an event loop running in the main thread while it lives, and a later test that
    calls asyncio.run() would fail. Each test still gets its own browser context."""

    def __init__(self) -> None:
        self._playwright: Any = None
        self._browser: Any = None

    def get(self) -> Any:
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            try:
                self._browser.close()
            finally:
                self._browser = None
                self._playwright.stop()
                self._playwright = None


_CHROMIUM = _Chromium()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    if nextitem is None or "browser" not in getattr(nextitem, "fixturenames", ()):
        _CHROMIUM.close()


@pytest.fixture
def browser() -> Any:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail("CI=true but /usr/bin/chromium is missing")
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium")
    return _CHROMIUM.get()


@pytest.fixture
def page(browser: Any, mailgate: Mailgate) -> Iterator[Any]:
    context = browser.new_context(
        base_url=mailgate.url, viewport={"width": 1366, "height": 900}, locale="en-GB"
    )
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def shot(page: Any, name: str, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def sign_in(page: Any, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    page.goto("/ui/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/(?!login)"))
    page.wait_for_selector("main[data-ready='1']")
