"""Browser tests: Playwright for Python driving Debian's Chromium (never a downloaded browser)
against pytest-django's live server, with the real Celery worker (`engine`) executing runs.

Chromium is found at $SPARKOPS_CHROMIUM, default /usr/bin/chromium (`make chromium`, which
`make test` runs, installs it with apt when missing). Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

CHROMIUM = os.environ.get("SPARKOPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
PASSWORD = "a-browser-test-passphrase"


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh Chromium per test. Playwright's sync API keeps an asyncio loop running in this
    thread while it is open, which makes Django refuse ORM calls from the test body; the
    override is limited to the browser's lifetime (function scope), so no other test runs
    with it."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"No Chromium at {CHROMIUM}: run `make chromium` (apt-get install chromium).")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1440, "height": 1000}
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@dataclass
class Operator:
    user: Any
    email: str
    password: str = PASSWORD


@pytest.fixture
def operator(db: Any) -> Operator:
    from accounts.models import User

    user = User.objects.create_superuser(email="ops@example.com", password=PASSWORD, name="Ops")
    return Operator(user=user, email=user.email)


def log_in(page: Any, operator: Operator) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", operator.email)
    page.fill("#id_password", operator.password)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def shot(page: Any, name: str, selector: str | None = None) -> Path:
    """The whole page, or just the element `selector` picks (the picture itself)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if selector:
        # Show each picture whole (on the page they scroll inside a box of 75% of the window).
        page.add_style_tag(content=".console-figure{max-height:none!important}")
        page.locator(selector).first.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    return path
