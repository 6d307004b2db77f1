"""The operator console in a real browser: log in, the dashboard, workflow graphs, a finished
run's timeline, a run that finishes while its page is open, approving from the admin, and the
"run now" form. Runs execute on the real Celery worker. Screenshots: test-artifacts/."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from runs import services as run_services
from runs.models import Run, RunStep
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run, wait_for_step
from tests.browser.conftest import log_in, shot
from tests.console_data import chain_definition, recorded_run, rich_workflow
from tools.models import Tool
from tools.tests.server import Reply, ToolServer
from workflows import services as workflow_services

pytestmark = pytest.mark.usefixtures("engine")


def start(workflow, actor, **input):
    return run_services.run_create(workflow=workflow, input=input, actor=actor, trigger="manual")


def history(workflow, status: str, when, duration_ms: int) -> None:
    """A finished run of the past, as a row (its steps and events don't matter here)."""
    run = Run.objects.create(
        project=workflow.project,
        workflow=workflow,
        version=workflow.current_version,
        status=status,
        trigger="schedule",
        duration_ms=duration_ms,
        input_tokens=900,
        output_tokens=300,
        cost=Decimal("0.0072") * (duration_ms // 1000),
        started_at=when,
        finished_at=when + timedelta(milliseconds=duration_ms),
    )
    Run.objects.filter(pk=run.pk).update(created_at=when)  # auto_now_add


def test_dashboard(page, operator, cast):
    quick = rich_workflow(cast.project, cast.owner, approval=False, name="Research")
    gated = rich_workflow(cast.project, cast.owner, name="Research with review")
    broken = make_workflow(
        cast.project, cast.owner, [transform("parse", "{{ input.missing.deeper }}")], name="Parse"
    )
    finished = [start(quick, cast.owner, topic=f"topic {i}") for i in range(3)]
    finished += [start(broken, cast.owner) for _ in range(2)]
    waiting = start(gated, cast.owner, topic="owls")
    for run in finished:
        wait_for_run(run.pk)
    wait_for_run(waiting.pk, ("waiting_approval",))
    # History, so the charts have a shape: earlier runs, recorded as rows (test data).
    now = timezone.now()
    for hours in range(1, 48, 3):
        history(quick, "succeeded", now - timedelta(hours=hours, minutes=7), 4000 + hours * 90)
        if hours % 2 == 0:
            history(broken, "failed", now - timedelta(hours=hours, minutes=9), 9000)
    for days in range(2, 30, 2):
        for i in range(days % 5 + 1):
            history(quick, "succeeded", now - timedelta(days=days, hours=i), 3000 + i * 700)
        history(broken, "failed" if days % 3 else "timed_out", now - timedelta(days=days), 6000)
    last_day = Run.objects.filter(created_at__gte=now - timedelta(hours=24)).count()

    log_in(page, operator)
    assert page.locator("#kpi-runs-24h b").inner_text() == str(last_day)
    assert page.locator("#kpi-waiting b").inner_text() == "1"
    assert page.locator("#kpi-stuck b").inner_text() == "0"
    assert page.locator("#chart-hourly rect.seg").count() >= 8
    assert page.locator("#chart-daily rect.seg[data-key=failed]").count() >= 1
    assert "Research with review" in page.locator("#waiting").inner_text()
    assert "Parse" in page.locator("#failing").inner_text()
    workers = page.locator("#workers").inner_text()
    assert "queue orchestration" in workers and "queue steps" in workers
    assert "worker " in workers  # the test's Celery worker answered the ping
    shot(page, "dashboard")

    page.select_option("#console-project", str(cast.other_project.pk))
    page.wait_for_url(f"**/admin/?project={cast.other_project.pk}")
    assert page.locator("#kpi-runs-24h b").inner_text() == "0"


def test_workflow_graphs_and_diff(page, operator, cast):
    workflow = rich_workflow(cast.project, cast.owner)
    log_in(page, operator)
    page.goto(f"/admin/workflows/workflow/{workflow.pk}/change/")
    graph = page.locator("#workflow-graph svg.sparkops-dag")
    assert graph.locator("g.node").count() == 5
    assert graph.locator("g.edge[data-conditional='1']").count() == 1
    assert "agent · researcher" in graph.locator("g.node[data-node=research]").text_content()
    shot(page, "workflow-change", "#content-main")

    definition = dict(workflow.definition)
    nodes = [dict(n) for n in definition["nodes"] if n["id"] != "notes"]
    for node in nodes:
        if node["id"] == "review":
            node["depends_on"] = ["summarize"]
            node["message"] = "Ship the summary on {{ input.topic }}?"
    nodes.append({"id": "archive", "type": "tool", "tool": "summarize", "depends_on": ["publish"]})
    workflow_services.workflow_update(
        workflow=workflow, actor=cast.owner, definition={**definition, "nodes": nodes}
    )
    page.goto(f"/admin/workflows/workflow/{workflow.pk}/graph/")
    assert page.locator("svg.sparkops-dag g.node").count() == 5
    shot(page, "workflow-graph", "#content-main")
    page.select_option("select[name=from]", "1")
    page.select_option("select[name=to]", "2")
    page.click("input[value='Side by side']")
    page.wait_for_url("**/diff/?from=1&to=2")
    assert page.locator("[data-version='1'] g.node[data-diff=removed]").count() == 1
    assert page.locator("[data-version='2'] g.node[data-diff=added]").count() == 1
    assert page.locator("[data-version='2'] g.node[data-diff=changed]").count() == 1
    shot(page, "workflow-diff", "#content-main")

    big = make_workflow(cast.project, cast.owner, **chain_definition(50, fan=3), name="Fifty")
    page.goto(f"/admin/workflows/workflow/{big.pk}/graph/")
    boxes = [page.locator(f"g.node[data-node=step{i}]").bounding_box() for i in range(0, 50, 7)]
    assert all(box and box["width"] > 100 for box in boxes)  # drawn at full size, scrollable
    shot(page, "workflow-graph-50", ".console-figure")


def test_finished_run_timeline_with_a_retry(page, operator, cast):
    with ToolServer() as server:
        server.script("/flaky", Reply(status=503, body={"error": "busy"}))
        Tool.objects.create(
            project=cast.project,
            name="flaky",
            kind="http",
            config={"method": "GET", "url": f"{server.url}/flaky"},
        )
        workflow = rich_workflow(cast.project, cast.owner, approval=False)
        definition = dict(workflow.definition)
        definition["nodes"] = [
            *definition["nodes"],
            {
                "id": "fetch",
                "type": "tool",
                "tool": "flaky",
                "depends_on": ["notes"],
                "retry": {"max_attempts": 3, "backoff_seconds": 0.3},
            },
        ]
        workflow_services.workflow_update(
            workflow=workflow, actor=cast.owner, definition=definition
        )
        run = wait_for_run(start(workflow, cast.owner, topic="tides", publish=True).pk)
        assert run.status == "succeeded", run.error
    log_in(page, operator)
    page.goto(f"/admin/runs/run/{run.pk}/change/")
    bars = page.locator("#run-live svg.sparkops-gantt g.bar")
    assert bars.count() == 6  # five steps, one of them twice
    assert page.locator("g.bar[data-node=fetch][data-attempt='1'][data-status=failed]").count() == 1
    title = page.locator("g.bar[data-node=fetch][data-attempt='1'] title").text_content()
    assert "HTTP 503" in title or "503" in title
    research = page.locator("g.bar[data-node=research] title").text_content()
    assert "tokens" in research and "cost $" in research
    assert page.locator("#run-live svg.sparkops-dag g.node[data-status=succeeded]").count() == 5
    shot(page, "run-timeline", "#run-live")


def test_a_waiting_run_updates_to_finished_while_its_page_is_open(page, operator, cast):
    workflow = rich_workflow(cast.project, cast.owner)
    run = start(workflow, cast.owner, topic="owls")
    wait_for_step(run.pk, "review", ("waiting_approval",))
    log_in(page, operator)
    page.goto(f"/admin/runs/run/{run.pk}/change/")
    assert page.locator("#run-live .console-live").is_visible()
    assert page.locator("g.node[data-node=review][data-status=waiting_approval]").count() == 1
    assert page.locator("g.bar[data-kind=approval][data-open='1']").count() == 1
    shot(page, "run-waiting", "#content-main")
    # Another operator approves through the API's service; this page was not touched.
    run_services.step_decide(run=run, node_id="review", actor=cast.admin, approve=True)
    page.locator("#run-live .console-run[data-status=succeeded]").wait_for(timeout=30_000)
    assert page.locator("g.node[data-node=publish][data-status=succeeded]").count() == 1
    assert page.locator("#run-live .console-live").count() == 0
    shot(page, "run-finished-live", "#run-live")


def test_approve_a_waiting_run_from_the_admin(page, operator, cast):
    workflow = rich_workflow(cast.project, cast.owner)
    run = start(workflow, cast.owner, topic="owls", publish=False)
    wait_for_step(run.pk, "review", ("waiting_approval",))
    log_in(page, operator)
    page.goto(f"/admin/runs/run/{run.pk}/change/")
    approval = page.locator(".console-approval[data-node=review]")
    assert "Publish the summary on owls?" in approval.inner_text()
    approval.locator("textarea").fill("Looks right to me")
    shot(page, "run-approval-form", ".console-approval")
    approval.locator("button[value=approve]").click()
    page.locator("ul.messagelist li.success").wait_for()
    assert "Approved step review." in page.locator("ul.messagelist").inner_text()
    page.locator("#run-live .console-run[data-status=succeeded]").wait_for(timeout=30_000)
    step = RunStep.objects.get(run=run, node_id="review")
    assert (step.status, step.decision_comment, step.decided_by) == (
        "succeeded",
        "Looks right to me",
        operator.user,
    )
    assert page.locator("g.node[data-node=publish][data-status=skipped]").count() == 1
    shot(page, "run-approved", "#content")


def test_run_a_workflow_with_the_run_now_form(page, operator, cast):
    workflow = rich_workflow(cast.project, cast.owner, approval=False)
    log_in(page, operator)
    page.goto(f"/admin/workflows/workflow/{workflow.pk}/change/")
    page.click("#run-now-link")
    page.wait_for_url(f"**/workflow/{workflow.pk}/run/")
    page.click("input[name=_run]")  # the form's own check: topic is required
    assert "This field is required." in page.locator(".field-topic").inner_text()
    page.fill("input[name=topic]", "tidal energy")
    page.fill("input[name=depth]", "7")
    page.click("input[name=_run]")  # the service's check against the input schema
    assert "Must be at most 5." in page.locator(".field-depth").inner_text()
    page.fill("input[name=depth]", "3")
    shot(page, "run-now-form", "#content")
    page.click("input[name=_run]")
    page.wait_for_url("**/admin/runs/run/*/change/")
    run = Run.objects.get(workflow=workflow)
    assert (run.trigger, run.input) == (
        "manual",
        {"topic": "tidal energy", "depth": 3, "publish": True},
    )
    page.locator("#run-live .console-run[data-status=succeeded]").wait_for(timeout=30_000)
    assert wait_for_run(run.pk).status == "succeeded"
    shot(page, "run-now-finished", "#run-live")


def test_a_timeline_of_fifty_steps_and_five_hundred_attempts(page, operator, cast):
    workflow = make_workflow(cast.project, cast.owner, **chain_definition(50, fan=1), name="Big")
    timeline = []
    for n in range(50):
        attempts = []
        t = n * 3.0
        for number in range(1, 11):
            outcome = "succeeded" if number == 10 else "failed"
            attempts.append((t, t + 0.4, t + 1.5 + (n % 4) * 0.3, outcome))
            t += 2.5
        timeline.append((f"step{n}", attempts))
    run = recorded_run(workflow, cast.owner, timeline)
    log_in(page, operator)
    page.goto(f"/admin/runs/run/{run.pk}/change/")
    assert page.locator("svg.sparkops-gantt g.bar").count() == 500
    assert page.locator("svg.sparkops-gantt g.row").count() == 50
    assert page.locator("svg.sparkops-dag g.node").count() == 50
    shot(page, "run-timeline-500", "#run-live")
