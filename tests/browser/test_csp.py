"""The Content-Security-Policy in a real browser: the admin, the operator console (dashboard,
graphs, a live run page, the run-now form), the browsable API, Swagger UI and ReDoc load and
work under it, and Chromium reports no violation (the `page` fixture fails any browser test
that causes one). The console's behaviour comes from static/console/console.js."""

from __future__ import annotations

import time
from typing import Any

import pytest

from runs import services as run_services
from runs.tests.factories import finished_run
from sparkops.testing.engine import wait_for_step
from tests.browser.conftest import ARTIFACTS, log_in, shot
from tests.console_data import rich_workflow

pytestmark = pytest.mark.usefixtures("engine")


def visit(page: Any, path: str) -> dict[str, str]:
    """Open `path`; its answer carries the self-only policy. Returns the policy's directives."""
    response = page.goto(path)
    assert response.status == 200, path
    policy = dict(
        d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";")
    )
    expected = {
        "default-src": "'self'",
        "script-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'self'",
        "frame-ancestors": "'none'",
    }
    assert {k: policy.get(k) for k in expected} == expected, (path, policy)
    # Inline style only where DRF's browsable API needs it; ReDoc's by nonce and hashes.
    if not path.startswith("/api/v1/"):
        assert "unsafe" not in policy["style-src"], (path, policy)
    return policy


def test_the_policy_is_enforced_and_reported(page, operator, csp_violations):
    """The detector works: an inline script the page did not ship is refused and reported."""
    log_in(page, operator)
    visit(page, "/admin/")
    with pytest.raises(Exception, match=r"Content Security Policy|Refused"):
        page.add_script_tag(content="window.injected = true")
    assert page.evaluate("window.injected") is None
    page.wait_for_function("1")  # let the event reach Python
    assert any("script-src" in v for v in csp_violations), csp_violations
    csp_violations.clear()


def test_admin_and_console_pages_load_under_the_policy(page, operator, cast):
    workflow = rich_workflow(cast.project, cast.owner)
    run = run_services.run_create(
        workflow=workflow, input={"topic": "owls"}, actor=cast.owner, trigger="manual"
    )
    wait_for_step(run.pk, "review", ("waiting_approval",))
    finished_run(cast, "failed")

    log_in(page, operator)
    for path in (
        "/admin/",
        "/admin/runs/run/",
        "/admin/workflows/workflow/",
        f"/admin/workflows/workflow/{workflow.pk}/change/",
        f"/admin/workflows/workflow/{workflow.pk}/graph/",
        f"/admin/workflows/workflow/{workflow.pk}/run/",
        "/admin/policies/policy/add/",
        "/admin/accounts/user/",
        "/admin/password_change/",
    ):
        visit(page, path)
        assert page.locator("#content").count() == 1, path
    # The console's stylesheet is applied (a file, not <style>): the KPI boxes are laid out.
    visit(page, "/admin/")
    display = page.eval_on_selector(".console-kpis", "e => getComputedStyle(e).display")
    assert display == "flex"
    shot(page, "csp-dashboard")

    # A run's live page: its script polls, swaps the picture in, and reloads when it ends.
    visit(page, f"/admin/runs/run/{run.pk}/change/")
    assert page.locator("#run-live .console-live").is_visible()
    badge = page.eval_on_selector(
        "#run-live .console-badge", "e => getComputedStyle(e).backgroundColor"
    )
    assert badge == "rgb(217, 119, 6)"  # waiting_approval, from console.css
    figure = page.locator("#run-live .console-figure").first
    page.locator("#run-live .console-fit").first.click()
    assert "fit" in figure.get_attribute("class")
    run_services.step_decide(run=run, node_id="review", actor=cast.admin, approve=True)
    page.locator("#run-live .console-run[data-status=succeeded]").wait_for(timeout=30_000)
    shot(page, "csp-run", "#run-live")


def test_browsable_api_and_docs_load_under_the_policy(page, operator):
    log_in(page, operator)
    visit(page, "/api/v1/projects/")
    assert page.locator(".response-info").count() == 1  # DRF's browsable API page

    visit(page, "/api/docs/")
    # Swagger UI keeps only what is in view in the page (a virtual list): scroll to the end,
    # collecting the operations that pass by. (A string predicate, wait_for_function, would be
    # an eval the page's own policy refuses.)
    summaries = page.locator(".swagger-ui .opblock-summary")
    summaries.first.wait_for(timeout=60_000)
    seen: set[str] = set()
    still, deadline = 0, time.monotonic() + 90
    while still < 15 and time.monotonic() < deadline:
        before = len(seen)
        seen.update(" ".join(text.split()) for text in summaries.all_inner_texts())
        still = still + 1 if len(seen) == before else 0
        page.mouse.wheel(0, 1500)
        page.wait_for_timeout(100)
    assert len(seen) > 50, sorted(seen)
    page.keyboard.press("Home")
    assert "Spark-Ops API" in page.locator(".swagger-ui .info .title").inner_text()
    page.screenshot(path=str(ARTIFACTS / "csp-swagger.png"))  # the first screen

    policy = visit(page, "/api/redoc/")
    assert policy["worker-src"] == "'self' blob:" and "'nonce-" in policy["style-src"]
    page.locator("h1", has_text="Spark-Ops API").wait_for(timeout=60_000)
    # Redocly's logo comes from their CDN: refused, and ReDoc drops the image.
    page.locator("img[alt='redocly logo']").wait_for(state="detached")
    page.locator("[role=search] input, input[placeholder=Search]").first.fill("runs")
    page.locator("[role=search] li, [data-role='search:result']").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "csp-redoc.png"))
