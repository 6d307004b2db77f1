"""When a finished step plans the run: a step with successors always does; a leaf only when
it was the last step in flight (so a wide fan-out plans once, and the run still moves to
`waiting_approval` or finishes at the right moment). Driven in this thread, without a worker."""

from __future__ import annotations

import pytest

from runs import services
from runs.models import RunEvent
from runs.tests.conftest import builtin_tool, drive, tool_node
from runs.tests.factories import make_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _every_step_queued(settings):
    # The worker path (what HTTP tools and model calls take): each step a task of its own.
    settings.SPARKOPS_INLINE_STEPS = 0


def test_a_fan_out_finishes_when_its_last_leaf_does(cast):
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    wf = make_workflow(
        cast.project, cast.owner, [tool_node(f"n{i}", "noop", {"i": i}) for i in range(6)]
    )
    run = drive(services.run_create(workflow=wf, input={}, actor=cast.owner))
    assert run.status == "succeeded", run.error
    assert run.output == {f"n{i}": {"i": i} for i in range(6)}
    types = [
        (e.type, e.payload.get("status")) for e in RunEvent.objects.filter(run=run).order_by("seq")
    ]
    assert types[-1] == ("run.status", "succeeded")
    assert types[-2] == ("step.status", "succeeded")
    assert types.count(("step.status", "succeeded")) == 6


def test_the_last_leaf_in_flight_moves_the_run_to_waiting_approval(cast):
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("a", "noop"),
            tool_node("b", "noop"),
            {"id": "review", "type": "approval"},
            tool_node("after", "noop", None, "review"),
        ],
    )
    run = drive(services.run_create(workflow=wf, input={}, actor=cast.owner))
    assert run.status == "waiting_approval"
    statuses = dict(run.steps.values_list("node_id", "status"))
    assert statuses == {
        "a": "succeeded",
        "b": "succeeded",
        "review": "waiting_approval",
        "after": "pending",
    }
    run_statuses = [
        e.payload["status"]
        for e in RunEvent.objects.filter(run=run, type="run.status").order_by("seq")
    ]
    assert run_statuses[-1] == "waiting_approval"


def test_a_step_with_successors_plans_even_while_others_are_in_flight(cast):
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("slow", "noop"),
            tool_node("first", "noop"),
            tool_node("second", "noop", None, "first"),
        ],
    )
    run = services.run_create(workflow=wf, input={}, actor=cast.owner)
    services.run_enqueue(run_id=run.pk)
    first = run.steps.get(node_id="first")
    services.step_execute(step_id=first.pk, attempt=first.attempt)
    statuses = dict(run.steps.values_list("node_id", "status"))
    assert statuses == {"slow": "queued", "first": "succeeded", "second": "queued"}
