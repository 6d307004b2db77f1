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
    title = page.locator("g.bar[data-node=fetch][data-attempt='1'] > title").text_content()
    assert "HTTP 503" in title or "503" in title
    research = page.locator("g.bar[data-node=research] > title").text_content()
    assert "tokens" in research and "cost $" in research
    assert page.locator("#run-live svg.sparkops-dag g.node[data-status=succeeded]").count() == 5
    # Each attempt of the flaky tool has its call inside it, the failed one red.
    failed_call = page.locator("g.bar[data-node=fetch][data-attempt='1'] g.call[data-ok='0']")
    assert "tool call flaky" in failed_call.locator("title").text_content()
    assert page.locator("g.bar[data-node=fetch][data-attempt='2'] g.call[data-ok='1']").count() == 1
    assert_timeline_inside_its_chart(page)
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
    # A run is a record, not a form: no Save, "Save and continue" or Delete on its page.
    for control in ("input[name=_save]", "input[name=_continue]", "a.deletelink"):
        assert page.locator(control).count() == 0, control
    assert page.locator(".submit-row a.closelink").is_visible()
    assert page.locator("#run-cancel").is_visible()
    shot(page, "run-page-read-only")
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


def inside(inner, outer, slack=0.75) -> bool:
    return (
        outer["x"] - slack <= inner["x"]
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
        and outer["y"] - slack <= inner["y"]
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack
    )


def assert_timeline_inside_its_chart(page) -> None:
    """Every bar and sub-bar of the timeline lies inside the plot area, and every call inside
    the bar of its attempt (measured in the page, as drawn)."""
    gantt = page.locator("#run-live svg.sparkops-gantt")
    plot = gantt.locator("rect.plot").bounding_box()
    figure = page.locator("#run-live .console-figure").last.bounding_box()
    assert inside(plot, figure)
    rects = gantt.locator("g.bar rect")
    assert rects.count() > 0
    for i in range(rects.count()):
        box = rects.nth(i).bounding_box()
        assert box["width"] >= 1.5 and inside(box, plot), (i, box, plot)
    bars = gantt.locator("g.bar:has(g.call)")
    for i in range(bars.count()):
        run = bars.nth(i).locator("rect.run").bounding_box()
        calls = bars.nth(i).locator("g.call rect")
        for j in range(calls.count()):
            assert inside(calls.nth(j).bounding_box(), run)


def test_model_and_tool_calls_are_sub_bars_inside_their_steps(page, operator, cast):
    """A real agent step (OpenAI SDK against the fake provider) that calls a real HTTP tool,
    then a tool step held open: the page shows the still-running step inside the chart, then
    the finished run with a sub-bar per model call and tool call, each with its tooltip."""
    import threading

    from agents.models import ModelPrice
    from runs.tests.conftest import ToolServer as CallServer
    from runs.tests.conftest import http_tool
    from runs.tests.test_engine_agents import make_agent
    from sparkops.testing.fake_llm import FakeLLMServer

    ModelPrice.objects.create(
        provider="openai",
        model_pattern="gpt-test-*",
        input_per_million=Decimal("1000"),
        output_per_million=Decimal("2000"),
    )
    release = threading.Event()
    server = CallServer().start()
    try:
        with FakeLLMServer() as fake_llm:
            lookup_url = server.route("/lookup", server.slow(0.3))
            fetch_url = server.route("/fetch", server.slow(60, release))
            lookup = http_tool(
                cast.project, cast.owner, "lookup", lookup_url, properties={"q": {"type": "string"}}
            )
            http_tool(cast.project, cast.owner, "fetcher", fetch_url)
            make_agent(cast, fake_llm, "openai", tools=[lookup])
            calls = [{"name": "lookup", "arguments": {"q": "tides"}}]
            fake_llm.enqueue("openai", {"tool_calls": calls, "delay": 0.25})
            fake_llm.enqueue("openai", {"content": "Tides are slow waves.", "delay": 0.25})
            workflow = make_workflow(
                cast.project,
                cast.owner,
                [
                    {"id": "think", "type": "agent", "agent": "helper", "prompt": "{{ input.q }}"},
                    {"id": "fetch", "type": "tool", "tool": "fetcher", "depends_on": ["think"]},
                ],
                name="Calls",
            )
            run = start(workflow, cast.owner, q="tides")
            wait_for_step(run.pk, "fetch", ("running",))
            log_in(page, operator)
            page.goto(f"/admin/runs/run/{run.pk}/change/")
            assert page.locator("g.bar[data-node=fetch][data-open='1']").count() == 1
            assert page.locator("svg.sparkops-gantt line.now").count() == 1
            assert_timeline_inside_its_chart(page)
            shot(page, "run-timeline-running", "#run-live")
            # Leave the live page first: it reloads itself when the run ends, which would
            # abort the navigation below.
            page.goto("/admin/")
            release.set()
            run = wait_for_run(run.pk)
    finally:
        release.set()
        server.stop()
    assert run.status == "succeeded", run.error
    page.goto(f"/admin/runs/run/{run.pk}/change/")
    think = page.locator("svg.sparkops-gantt g.bar[data-node=think]")
    assert think.locator("g.call[data-kind=llm]").count() == 2
    assert think.locator("g.call[data-kind=tool][data-name=lookup]").count() == 1
    assert page.locator("g.bar[data-node=fetch] g.call[data-kind=tool]").count() == 1
    model = think.locator("g.call[data-kind=llm] title").first.text_content()
    assert "model call gpt-test-1" in model and "asked for: lookup" in model
    assert "cost $" in model
    tool = think.locator("g.call[data-kind=tool] title").text_content()
    assert "tool call lookup" in tool and "ok · took" in tool and "HTTP 200" in tool
    # The model calls waited 0.25 s at the provider and the tool 0.3 s: the sub-bars have
    # widths, not just the 2 px minimum.
    widths = [think.locator("g.call rect").nth(i).bounding_box()["width"] for i in range(3)]
    assert all(w > 4 for w in widths), widths
    assert "2 model calls, 1 tool call" in think.locator("> title").text_content()
    assert_timeline_inside_its_chart(page)
    shot(page, "run-timeline-calls", "#run-live")


def test_dashboard_charts_with_one_day_of_data_and_with_none(page, operator, cast):
    """Runs on a single day only (one bucket in each chart) still draw readable bars with
    their value and date, whole-number axes and legible spend; a project without runs shows
    each chart's empty state."""
    workflow = rich_workflow(cast.project, cast.owner, approval=False, name="Research")
    runs = [start(workflow, cast.owner, topic=f"topic {i}") for i in range(2)]
    for run in runs:
        assert wait_for_run(run.pk).status == "succeeded"
    log_in(page, operator)
    page.select_option("#console-project", str(cast.project.pk))
    page.wait_for_url(f"**/admin/?project={cast.project.pk}")
    today = timezone.now().strftime("%b %d")
    for chart, value in (("#chart-hourly", "2"), ("#chart-daily", "2"), ("#chart-spend", "$")):
        svg = page.locator(f"{chart} svg.sparkops-chart")
        frame = svg.bounding_box()
        assert frame["width"] > 300 and frame["height"] > 80, (chart, frame)
        assert svg.get_attribute("data-empty") is None
        segments = svg.locator("rect.seg")
        assert segments.count() >= 1
        top = min(segments.nth(i).bounding_box()["y"] for i in range(segments.count()))
        for i in range(segments.count()):
            box = segments.nth(i).bounding_box()
            assert box["width"] >= 10 and inside(box, frame), (chart, box)
        bottom = max(
            segments.nth(i).bounding_box()["y"] + segments.nth(i).bounding_box()["height"]
            for i in range(segments.count())
        )
        assert bottom - top > 60, chart  # the day's bar is tall, not a sliver
        assert svg.locator("text.value").text_content().startswith(value), chart
        assert svg.locator("text.value").is_visible()
        for text in svg.locator("text").all():  # every label whole, inside the picture
            assert inside(text.bounding_box(), frame, slack=1), (chart, text.text_content())
        y_labels = svg.locator("text.y-label").all_text_contents()
        assert ".5" not in "".join(y_labels) or chart == "#chart-spend", y_labels
        assert len(set(y_labels)) == len(y_labels) >= 2, (chart, y_labels)  # legible, distinct
    assert today in page.locator("#chart-daily svg text.x-label").all_text_contents()
    assert today in page.locator("#chart-spend svg text.x-label").all_text_contents()
    shot(page, "dashboard-one-day")
    shot(page, "dashboard-one-day-spend", "#chart-spend")

    page.select_option("#console-project", str(cast.other_project.pk))
    page.wait_for_url(f"**/admin/?project={cast.other_project.pk}")
    for chart, message in (
        ("#chart-hourly", "No runs in the last 24 hours."),
        ("#chart-daily", "No runs in the last 30 days."),
        ("#chart-spend", "No spend in the last 30 days."),
    ):
        svg = page.locator(f"{chart} svg.sparkops-chart")
        assert svg.get_attribute("data-empty") == "1"
        assert svg.locator("text.empty").text_content() == message
        assert svg.locator("text.empty").is_visible()
        assert svg.locator("rect.seg").count() == 0
    assert page.locator("#kpi-runs-24h b").inner_text() == "0"
    assert page.locator("#kpi-duration b").inner_text() == "— / —"
    shot(page, "dashboard-empty")
