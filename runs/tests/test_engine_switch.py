"""`switch` nodes on a real Celery worker: one branch taken, the rest skipped by the skip rules;
a default; no branch fails the step; retries of the branch taken; cancel; resume from failure."""

from __future__ import annotations

import pytest

from runs import services
from runs.models import Run
from runs.tests.conftest import events_of, http_tool, tool_node
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run, wait_for_step

pytestmark = pytest.mark.usefixtures("engine")

FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.05, "max_backoff_seconds": 0.1}


def start(workflow, actor, input=None):
    return services.run_create(workflow=workflow, input=input or {}, actor=actor)


def switch(id, *depends_on, **fields):
    return {"id": id, "type": "switch", "depends_on": list(depends_on), **fields}


def statuses(run):
    return dict(run.steps.values_list("node_id", "status"))


def routed_workflow(cast, **switch_fields):
    fields = {
        "value": "{{ steps.classify.output.category }}",
        "cases": [
            {"equals": "bug", "to": "fix"},
            {"when": "{{ steps.classify.output.urgent }}", "to": "escalate"},
        ],
        "default": "answer",
        **switch_fields,
    }
    return make_workflow(
        cast.project,
        cast.owner,
        [
            transform("classify", {"category": "{{ input.category }}", "urgent": "{{ input.u }}"}),
            switch("route", "classify", **fields),
            transform("fix", "patched", "route"),
            transform("escalate", "paged", "route"),
            transform("answer", "replied", "route"),
            transform("after_fix", "{{ steps.fix.output }}!", "fix"),
            transform("done", "{{ steps.route.output.branch }}", "fix", "escalate", "answer"),
        ],
        output={"done": "{{ steps.done.output }}"},
    )


def test_exactly_one_branch_is_taken_and_the_others_are_skipped(cast):
    wf = routed_workflow(cast)
    bug = wait_for_run(start(wf, cast.owner, {"category": "bug", "u": True}).pk)
    assert bug.status == "succeeded", bug.error
    assert bug.output == {"done": "fix"}  # the first case that holds wins
    assert statuses(bug) == {
        "classify": "succeeded",
        "route": "succeeded",
        "fix": "succeeded",
        "escalate": "skipped",
        "answer": "skipped",
        "after_fix": "succeeded",
        "done": "succeeded",
    }
    assert bug.steps.get(node_id="route").output == {"branch": "fix", "case": 0, "value": "bug"}
    skipped = [e.payload for e in events_of(bug, "step.status", "answer")]
    assert skipped == [{"status": "skipped", "reason": "switch 'route' took another branch"}]

    urgent = wait_for_run(start(wf, cast.owner, {"category": "billing", "u": True}).pk)
    assert urgent.output == {"done": "escalate"}
    taken = statuses(urgent)
    assert (taken["escalate"], taken["fix"], taken["after_fix"]) == ("succeeded",) + (
        "skipped",
    ) * 2  # downstream of only a skipped branch is skipped too

    other = wait_for_run(start(wf, cast.owner, {"category": "billing", "u": False}).pk)
    assert other.output == {"done": "answer"}
    assert other.steps.get(node_id="route").output == {
        "branch": "answer",
        "case": None,
        "value": "billing",
    }


def test_no_case_and_no_default_fails_the_switch_and_the_run(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("classify", {"category": "{{ input.category }}"}),
            switch(
                "route",
                "classify",
                value="{{ steps.classify.output.category }}",
                cases=[{"equals": "bug", "to": "fix"}],
            ),
            transform("fix", 1, "route"),
        ],
        name="no-default",
    )
    run = wait_for_run(start(wf, cast.owner, {"category": "praise"}).pk)
    assert run.status == "failed"
    error = run.steps.get(node_id="route").error
    assert error["type"] == "no_branch"
    assert (
        error["message"]
        == "No case of switch 'route' holds (value 'praise') and it has no default."
    )
    assert run.error["step"] == "route"
    assert statuses(run)["fix"] == "cancelled"


def test_a_case_that_cannot_be_evaluated_fails_the_step(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            switch("route", cases=[{"when": "{{ input.a.b.c }}", "to": "x"}], default="x"),
            transform("x", 1, "route"),
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    error = run.steps.get(node_id="route").error
    assert error["type"] == "template_error"
    assert "case 0" in error["message"]


def test_the_branch_taken_retries_with_its_own_settings(cast, tool_server):
    flaky = http_tool(
        cast.project, cast.owner, "flaky", tool_server.route("/flaky", tool_server.failing(2))
    )
    http_tool(
        cast.project, cast.owner, "never", tool_server.route("/never", tool_server.failing(0))
    )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            switch("route", cases=[{"when": "{{ input.go }}", "to": "call"}], default="other"),
            tool_node("call", flaky.name, {}, "route", retry=FAST_RETRY),
            tool_node("other", "never", {}, "route"),
        ],
    )
    run = wait_for_run(start(wf, cast.owner, {"go": True}).pk)
    assert run.status == "succeeded", run.error
    call = run.steps.get(node_id="call")
    assert (call.status, call.attempt, call.failures) == ("succeeded", 3, 2)
    assert run.steps.get(node_id="route").attempt == 1  # the switch is not evaluated again
    assert statuses(run)["other"] == "skipped"
    assert tool_server.calls("/never") == []


def test_a_switch_after_an_approval_runs_on_the_worker_and_cancel_stops_the_branch(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            {"id": "review", "type": "approval"},
            switch(
                "route", "review", cases=[{"when": "{{ input.go }}", "to": "wait"}], default="x"
            ),
            {"id": "wait", "type": "approval", "depends_on": ["route"]},
            transform("x", 1, "route"),
        ],
    )
    run = start(wf, cast.owner, {"go": True})
    wait_for_run(run.pk, ("waiting_approval",))
    services.step_decide(run=run, node_id="review", actor=cast.owner, approve=True)
    # the approval plans from the request (not inline): the switch goes to the worker
    wait_for_run(run.pk, ("waiting_approval",))
    wait_for_step(run.pk, "wait", ("waiting_approval",))
    route = Run.objects.get(pk=run.pk).steps.get(node_id="route")
    assert route.output["branch"] == "wait"
    queued = [e.payload for e in events_of(run, "step.status", "route")][:1]
    assert queued == [{"status": "queued"}]  # queued for a worker, not run inline
    assert statuses(run)["x"] == "skipped"
    services.run_cancel(run=run, actor=cast.owner)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "cancelled"
    assert statuses(run) == {
        "review": "succeeded",
        "route": "succeeded",
        "wait": "cancelled",
        "x": "skipped",
    }


def test_resume_from_failure_reuses_the_switch_and_runs_only_the_failed_branch(cast, tool_server):
    http_tool(
        cast.project, cast.owner, "once", tool_server.route("/once", tool_server.failing(1, 404))
    )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("pick", "{{ input.to }}"),
            switch(
                "route",
                "pick",
                value="{{ steps.pick.output }}",
                cases=[{"equals": "call", "to": "call"}, {"equals": "x", "to": "x"}],
            ),
            tool_node("call", "once", {}, "route"),
            transform("x", 1, "route"),
        ],
    )
    failed = wait_for_run(start(wf, cast.owner, {"to": "call"}).pk)
    assert failed.status == "failed"
    assert failed.error["step"] == "call"
    retried = services.run_retry(run=failed, actor=cast.owner, from_failure=True)
    retried = wait_for_run(retried.pk)
    assert retried.status == "succeeded", retried.error
    route = retried.steps.get(node_id="route")
    assert route.reused_from.run_id == failed.pk
    assert statuses(retried) == {
        "pick": "succeeded",
        "route": "succeeded",
        "call": "succeeded",
        "x": "skipped",
    }
    assert len(tool_server.calls("/once")) == 2
