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


# Every page reports what its Content-Security-Policy refused (the event fires in the page, so
# it is handed to Python through an exposed function).
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => window.__cspViolation({
    page: location.pathname, directive: e.effectiveDirective, blocked: e.blockedURI,
    source: e.sourceFile, line: e.lineNumber, sample: e.sample}));
"""


class CSPViolations(list[str]):
    """What the Content-Security-Policy refused while a test's browser was open: the pages'
    `securitypolicyviolation` events and Chromium's console errors naming the policy (those
    also cover workers and what happens before a page's scripts run).

    One refusal is expected and left out: ReDoc's footer always shows Redocly's logo from
    their CDN (there is no option to turn it off); the policy refuses it and ReDoc drops the
    image when it fails to load."""

    EXPECTED = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)

    def console(self, message: Any) -> None:
        if "Content Security Policy" in message.text and not any(
            url in message.text for url in self.EXPECTED
        ):
            self.append(f"console: {message.text}")

    def event(self, source: Any, violation: dict[str, Any]) -> None:
        if violation.get("blocked") not in self.EXPECTED:
            self.append(f"event: {violation}")


@pytest.fixture
def csp_violations() -> CSPViolations:
    return CSPViolations()


@pytest.fixture
def page(browser: Any, live_server: Any, csp_violations: CSPViolations) -> Iterator[Any]:
    """A page of a fresh browser context. Any test that loads a page the policy breaks fails:
    the fixture asserts at the end that nothing was refused."""
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1440, "height": 1000}
    )
    context.set_default_timeout(20_000)
    context.expose_binding("__cspViolation", csp_violations.event)
    context.add_init_script(REPORT_VIOLATIONS)
    context.on("console", csp_violations.console)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
    assert not csp_violations, "Content-Security-Policy violations:\n" + "\n".join(csp_violations)


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
        # Through the DOM, as the page's own script would: the Content-Security-Policy refuses
        # an added <style>.
        page.eval_on_selector_all(
            ".console-figure", "els => els.forEach(e => e.style.maxHeight = 'none')"
        )
        page.locator(selector).first.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    return path
