"""The console's admin pages without a worker: workflow graphs, version diffs, the run-now
form, a run's picture and its live endpoint, actions, pretty records and the query counts of
the big changelists."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from accounts.tests.factories import UserFactory
from runs import services as run_services
from runs.models import Run, RunEvent, RunStep
from runs.tests.factories import finished_run, make_workflow, transform
from tests.console_data import recorded_run, rich_workflow
from workflows import services as workflow_services
from workflows.models import Workflow

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _forget_version_snapshots() -> Any:
    """Approving here plans runs in this process, and the engine caches version snapshots by
    primary key for the process's life; SQLite hands the same keys out again after this
    test's rollback, so a later engine test would read this test's definition."""
    yield
    from runs.services import state

    cached = getattr(state, "_snapshot", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_workflow_page_shows_its_graph(cast, operator):
    workflow = rich_workflow(cast.project, cast.owner)
    html = operator.get(f"/admin/workflows/workflow/{workflow.pk}/change/").content.decode()
    assert 'id="workflow-graph"' in html
    for node_id in ("research", "notes", "summarize", "review", "publish"):
        assert f'data-node="{node_id}"' in html
    assert 'data-type="agent"' in html and "agent · researcher" in html
    assert "tool · summarize" in html
    assert 'data-conditional="1"' in html  # publish has a `when`
    assert f"/admin/workflows/workflow/{workflow.pk}/run/" in html

    page = operator.get(f"/admin/workflows/workflow/{workflow.pk}/graph/")
    assert page.status_code == 200
    assert page.content.decode().count('class="node"') == 5
    assert operator.get("/admin/workflows/workflow/999999/graph/").status_code == 404


def test_version_graphs_and_side_by_side_diff(cast, operator):
    workflow = rich_workflow(cast.project, cast.owner)
    definition = json.loads(json.dumps(workflow.definition))
    definition["nodes"] = [n for n in definition["nodes"] if n["id"] != "notes"]
    review = next(n for n in definition["nodes"] if n["id"] == "review")
    review["depends_on"] = ["summarize"]
    review["message"] = "Ship it?"
    definition["nodes"].append({"id": "audit", "type": "transform", "output": 1})
    workflow_services.workflow_update(workflow=workflow, actor=cast.owner, definition=definition)
    v1, v2 = workflow.versions.order_by("number")

    html = operator.get(f"/admin/workflows/workflowversion/{v1.pk}/graph/").content.decode()
    assert 'data-node="notes"' in html and 'data-node="audit"' not in html
    html = operator.get(f"/admin/workflows/workflowversion/{v2.pk}/change/").content.decode()
    assert 'id="version-graph"' in html and 'data-node="audit"' in html
    assert f"/admin/workflows/workflow/{workflow.pk}/diff/?from=1&amp;to=2" in html

    html = operator.get(
        f"/admin/workflows/workflow/{workflow.pk}/diff/", {"from": 1, "to": 2}
    ).content.decode()
    before, after = html.split('data-version="2"')
    assert 'data-node="notes" data-type="transform" data-diff="removed"' in before
    assert 'data-node="review" data-type="approval" data-diff="changed"' in before
    assert 'data-node="audit" data-type="transform" data-diff="added"' in after
    assert 'data-node="review" data-type="approval" data-diff="changed"' in after
    assert "review (depends_on, message)" in html
    bad = operator.get(f"/admin/workflows/workflow/{workflow.pk}/diff/", {"from": 1, "to": 9})
    assert bad.status_code == 302 and "No version 9" in " ".join(messages_of(bad))


def test_run_now_form_is_built_from_the_input_schema_and_validated_by_the_service(cast, operator):
    workflow = rich_workflow(cast.project, cast.owner)
    url = f"/admin/workflows/workflow/{workflow.pk}/run/"
    form = operator.get(url).content.decode()
    assert 'name="topic"' in form and 'name="depth"' in form and 'name="publish"' in form

    missing = operator.post(url, {"depth": "2"})
    assert missing.status_code == 200 and "This field is required." in missing.content.decode()
    too_deep = operator.post(url, {"topic": "owls", "depth": "9"})
    assert too_deep.status_code == 200
    assert "Must be at most 5." in too_deep.content.decode()  # the service's schema check
    assert not Run.objects.exists()

    started = operator.post(url, {"topic": "owls", "depth": "3", "publish": "on"})
    run = Run.objects.get()
    assert started.status_code == 302 and started.url == f"/admin/runs/run/{run.pk}/change/"
    assert (run.trigger, run.input, run.created_by) == (
        "manual",
        {"topic": "owls", "depth": 3, "publish": True},
        started.wsgi_request.user,
    )

    workflow_services.workflow_set_status(workflow=workflow, actor=cast.owner, status="paused")
    refused = operator.post(url, {"topic": "owls"})
    assert refused.status_code == 200 and "activate it to start runs" in refused.content.decode()
    assert Run.objects.count() == 1


def test_run_now_without_properties_takes_raw_json(cast, operator):
    workflow = make_workflow(cast.project, cast.owner, [transform("a", "{{ input.x }}")])
    url = f"/admin/workflows/workflow/{workflow.pk}/run/"
    assert 'name="input_json"' in operator.get(url).content.decode()
    assert operator.post(url, {"input_json": "[1"}).status_code == 200  # not JSON
    assert operator.post(url, {"input_json": '{"x": 5}'}).status_code == 302
    assert Run.objects.get().input == {"x": 5}


def test_run_page_shows_graph_timeline_and_live_endpoint(cast, operator):
    workflow = make_workflow(
        cast.project, cast.owner, [transform("a", 1), transform("b", 2, "a")], name="two"
    )
    run = recorded_run(
        workflow,
        cast.owner,
        [
            ("a", [(0, 0.5, 2, "failed"), (3, 3.2, 5, "succeeded")]),
            ("b", [(5, 5.1, 8, "succeeded")]),
        ],
    )
    page = operator.get(f"/admin/runs/run/{run.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="run-live"' in html and 'data-finished="1"' in html
    assert 'data-node="a" data-type="transform" data-status="succeeded"' in html
    assert html.count('class="bar"') == 3
    assert 'data-node="a" data-attempt="1" data-kind="task" data-status="failed"' in html
    assert 'data-node="a" data-attempt="2" data-kind="task" data-status="succeeded"' in html
    assert "error: HTTP 503 from upstream" in html
    assert "&#215;2" in html  # the graph marks a node that took two attempts
    assert 'id="run-retry"' in html and 'id="run-cancel"' not in html

    live = f"/admin/runs/run/{run.pk}/live/"
    assert operator.get(live, {"seq": run.event_seq}).status_code == 200  # finished: picture
    Run.objects.filter(pk=run.pk).update(status="running", finished_at=None)
    assert operator.get(live, {"seq": run.event_seq}).status_code == 204  # nothing new
    data = operator.get(live, {"seq": run.event_seq - 1}).json()
    assert data["seq"] == run.event_seq and data["finished"] is False
    assert 'class="console-live"' in data["html"]


@pytest.mark.usefixtures("engine")
def test_a_map_run_page_collapses_the_items_into_the_map(cast, operator):
    from sparkops.testing.engine import wait_for_run

    workflow = make_workflow(
        cast.project,
        cast.owner,
        [
            {
                "id": "m",
                "type": "map",
                "items": [1, 2, 3],
                "node": {"type": "transform", "output": "{{ item }}"},
            }
        ],
        name="mapped",
    )
    run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
    assert wait_for_run(run.pk).status == "succeeded"
    html = operator.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert 'data-node="m" data-type="map" data-status="succeeded"' in html
    assert "succeeded · 3/3 items" in html
    assert 'class="row" data-node="m"' in html and 'data-node="m[0]"' not in html
    # the map's own span and one bar per item, all in the map's row
    assert html.count('class="bar" data-node="m"') == 4


def test_run_operations_from_the_run_page(cast, operator):
    failed = finished_run(cast, "failed")
    response = operator.post(f"/admin/runs/run/{failed.pk}/do/resume/")
    new = Run.objects.exclude(pk=failed.pk).get()
    assert response.url == f"/admin/runs/run/{new.pk}/change/"
    assert (new.parent_run, new.reuse_succeeded) == (failed, True)
    response = operator.post(f"/admin/runs/run/{new.pk}/do/cancel/")
    assert Run.objects.get(pk=new.pk).status == "cancelled"
    response = operator.post(f"/admin/runs/run/{new.pk}/do/cancel/")
    assert "already finished" in " ".join(messages_of(response))
    assert operator.get(f"/admin/runs/run/{new.pk}/do/cancel/").status_code == 405
    assert operator.post(f"/admin/runs/run/{new.pk}/do/explode/").status_code == 405


def test_run_actions_report_each_row(cast, operator):
    done, other = finished_run(cast, "succeeded"), finished_run(cast, "failed")
    active = run_services.run_create(
        workflow=done.workflow, input={}, actor=cast.owner, trigger="manual"
    )
    response = operator.post(
        "/admin/runs/run/",
        {"action": "retry_runs", "_selected_action": [str(done.pk), str(active.pk)]},
    )
    notes = messages_of(response)
    assert "Retried: 1 run(s)." in notes
    assert any(n.startswith(f"Retried failed for {str(active.pk)[:8]}") for n in notes)
    response = operator.post(
        "/admin/runs/run/",
        {"action": "retry_from_failure", "_selected_action": [str(done.pk), str(other.pk)]},
    )
    assert "Resumed: 1 run(s)." in messages_of(response)
    response = operator.post(
        "/admin/runs/run/", {"action": "cancel_runs", "_selected_action": [str(active.pk)]}
    )
    assert Run.objects.get(pk=active.pk).status == "cancelled"


def waiting_run(cast, name: str = "gate") -> Run:
    """A run stopped at its approval step (set up by hand: no worker in these tests)."""
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [{"id": "gate", "type": "approval", "message": "Go?"}, transform("after", 1, "gate")],
        name=name,
    )
    run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
    Run.objects.filter(pk=run.pk).update(status="waiting_approval")
    RunStep.objects.filter(run=run, node_id="gate").update(
        status="waiting_approval", input={"message": "Go?"}
    )
    return run


def test_bulk_approve_asks_for_a_comment_then_decides_each_step(cast, operator):
    first, second, done = waiting_run(cast, "one"), waiting_run(cast, "two"), finished_run(cast)
    selected = [str(first.pk), str(second.pk), str(done.pk)]
    page = operator.post(
        "/admin/runs/run/", {"action": "approve_runs", "_selected_action": selected}
    )
    html = page.content.decode()
    assert page.status_code == 200 and "2 steps waiting for approval" in html and "Go?" in html
    assert RunStep.objects.filter(status="waiting_approval").count() == 2
    response = operator.post(
        "/admin/runs/run/",
        {
            "action": "approve_runs",
            "_selected_action": selected,
            "confirm": "yes",
            "comment": "ship it",
        },
    )
    assert response.status_code == 302
    assert "Approved 2 step(s)." in messages_of(response)
    gate = RunStep.objects.get(run=first, node_id="gate")
    assert (gate.status, gate.decision_comment) == ("succeeded", "ship it")
    assert RunEvent.objects.filter(run=second, type="approval.decided").count() == 1


def test_reject_from_the_run_page_and_from_the_step_list(cast, operator):
    run = waiting_run(cast)
    page = operator.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert 'class="console-approval" data-node="gate"' in page
    response = operator.post(
        f"/admin/runs/run/{run.pk}/decide/",
        {"node_id": "gate", "decision": "reject", "comment": "not today"},
    )
    assert "Rejected step gate." in messages_of(response)
    assert Run.objects.get(pk=run.pk).status == "failed"
    again = operator.post(
        f"/admin/runs/run/{run.pk}/decide/", {"node_id": "gate", "decision": "approve"}
    )
    assert "is not waiting for approval" in " ".join(messages_of(again))

    other = waiting_run(cast, "other")
    step = RunStep.objects.get(run=other, node_id="gate")
    response = operator.post(
        "/admin/runs/runstep/",
        {"action": "reject", "_selected_action": [str(step.pk)], "confirm": "yes", "comment": ""},
    )
    assert "Rejected 1 step(s)." in messages_of(response)


def test_workflow_actions_clone_run_now_pause(cast, operator):
    workflow = rich_workflow(cast.project, cast.owner)
    plain = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="plain")
    response = operator.post(
        "/admin/workflows/workflow/",
        {"action": "clone_workflows", "_selected_action": [str(workflow.pk)]},
    )
    clone = Workflow.objects.get(name="Research (copy)")
    assert clone.status == "draft" and clone.definition == workflow.definition
    assert clone.versions.count() == 1 and clone.slug != workflow.slug
    assert any("cloned as" in n for n in messages_of(response))

    one = operator.post(
        "/admin/workflows/workflow/",
        {"action": "run_now", "_selected_action": [str(workflow.pk)]},
    )
    assert one.status_code == 302 and one.url.endswith(f"/workflow/{workflow.pk}/run/")
    both = operator.post(
        "/admin/workflows/workflow/",
        {"action": "run_now", "_selected_action": [str(workflow.pk), str(plain.pk)]},
    )
    notes = " ".join(messages_of(both))
    assert "plain: started run" in notes and "input.topic: This field is required." in notes
    assert Run.objects.get().workflow == plain

    operator.post(
        "/admin/workflows/workflow/",
        {"action": "pause_workflows", "_selected_action": [str(plain.pk)]},
    )
    assert Workflow.objects.get(pk=plain.pk).status == "paused"


def test_records_are_pretty_and_read_only(cast, operator):
    run = finished_run(cast)
    Run.objects.filter(pk=run.pk).update(output={"answer": {"deep": 1}})
    run_services.event_append(run.pk, "log", {"message": "hello", "n": 1})
    event = RunEvent.objects.get(run=run)
    html = operator.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert "&quot;answer&quot;: {\n    &quot;deep&quot;: 1\n  }" in html
    html = operator.get(f"/admin/runs/runevent/{event.pk}/change/").content.decode()
    assert "\n  &quot;message&quot;: &quot;hello&quot;" in html  # indented
    assert 'name="payload"' not in html
    step = run.steps.get()
    html = operator.get(f"/admin/runs/runstep/{step.pk}/change/").content.decode()
    assert 'name="output"' not in html and "<pre" in html


def test_run_and_step_pages_are_records_without_save_or_delete(cast, operator):
    """A run is a record, not a form: no Save, "Save and continue" or Delete on its page or a
    step's; a POST to the form is refused and changes nothing; nothing deletes a run. The
    operations that exist still work from the page."""
    workflow = rich_workflow(cast.project, cast.owner)
    waiting = run_services.run_create(workflow=workflow, input={"topic": "owls"}, actor=cast.owner)
    failed = finished_run(cast, "failed")
    step = failed.steps.get()
    for url in (
        f"/admin/runs/run/{failed.pk}/change/",
        f"/admin/runs/run/{waiting.pk}/change/",
        f"/admin/runs/runstep/{step.pk}/change/",
    ):
        page = operator.get(url)
        html = page.content.decode()
        assert page.status_code == 200, url
        for control in ('name="_save"', 'name="_continue"', 'name="_addanother"', "deletelink"):
            assert control not in html, (url, control)
        assert 'class="closelink"' in html, url
    html = operator.get(f"/admin/runs/run/{failed.pk}/change/").content.decode()
    assert 'id="run-retry"' in html and 'id="run-resume"' in html
    assert (
        'id="run-cancel"' in operator.get(f"/admin/runs/run/{waiting.pk}/change/").content.decode()
    )

    before = Run.objects.filter(pk=failed.pk).values().get()
    response = operator.post(f"/admin/runs/run/{failed.pk}/change/", {"trigger": "api"})
    assert response.status_code == 403
    assert Run.objects.filter(pk=failed.pk).values().get() == before
    assert operator.post(f"/admin/runs/runstep/{step.pk}/change/", {}).status_code == 403
    assert operator.get(f"/admin/runs/run/{failed.pk}/delete/").status_code == 403
    assert operator.post(f"/admin/runs/run/{failed.pk}/delete/", {"post": "yes"}).status_code == 403
    changelist = operator.get("/admin/runs/run/").content.decode()
    assert 'value="delete_selected"' not in changelist
    assert 'value="cancel_runs"' in changelist and 'value="approve_runs"' in changelist
    response = operator.post(
        "/admin/runs/run/",
        {"action": "delete_selected", "_selected_action": [str(failed.pk)], "post": "yes"},
    )
    assert Run.objects.filter(pk=failed.pk).exists()

    # The page's buttons still operate, through the services.
    response = operator.post(f"/admin/runs/run/{waiting.pk}/do/cancel/")
    assert response.status_code == 302
    assert Run.objects.get(pk=waiting.pk).cancel_requested or (
        Run.objects.get(pk=waiting.pk).status == "cancelled"
    )
    response = operator.post(f"/admin/runs/run/{failed.pk}/do/retry/")
    assert Run.objects.filter(parent_run=failed).count() == 1


def make_runs(cast, count: int) -> None:
    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1), transform("b", 1)])
    for _ in range(count):
        run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
        run_services.event_append(run.pk, "log", {"n": 1}, node_id="a")


@pytest.mark.parametrize(
    ("url", "queries"),
    [
        # session, user, the project and workflow filters' choices, count, full count, rows
        # (with workflow and project), date hierarchy (range, then days)
        ("/admin/runs/run/", 9),
        # session, user, count, full count, rows (with run and workflow), the type filter
        ("/admin/runs/runstep/", 6),
        # session, user, count, full count, rows (with run), date hierarchy (range, days)
        ("/admin/runs/runevent/", 7),
    ],
)
def test_changelist_query_counts_do_not_grow_with_rows(
    cast, operator, django_assert_num_queries, url, queries
):
    make_runs(cast, 2)
    operator.get(url)
    with django_assert_num_queries(queries):
        assert operator.get(url).status_code == 200
    make_runs(cast, 12)
    with django_assert_num_queries(queries):
        response = operator.get(url)
    assert response.status_code == 200 and response.context["cl"].result_count >= 14


def test_changelists_filter_and_search(cast, operator):
    run = finished_run(cast, "failed")
    for url, params in (
        ("/admin/runs/run/", {"status__exact": "failed", "q": "wf-failed"}),
        ("/admin/runs/run/", {"stuck": "yes"}),
        ("/admin/runs/run/", {"status__in": "pending,queued,running,waiting_approval"}),
        ("/admin/runs/run/", {"workflow__id__exact": run.workflow_id}),
        ("/admin/runs/runstep/", {"status__exact": "succeeded", "q": "a"}),
        ("/admin/runs/runevent/", {"type__exact": "log"}),
        ("/admin/runs/idempotencykey/", {}),
        ("/admin/workflows/workflow/", {"q": "wf"}),
        ("/admin/workflows/workflowversion/", {}),
    ):
        response = operator.get(url, params)
        assert response.status_code == 200, (url, params)
    html = operator.get("/admin/workflows/workflow/").content.decode()
    assert "Last run" in html and ">failed</span>" in html
