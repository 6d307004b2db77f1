"""Several queued steps of one run started in one statement (`attempts.steps_start`, the start
of a message that carries several, runs/services/dispatch.py): each fenced as a single start
is, their `running` events numbered in step order after the run's others."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from runs import services
from runs.models import Run, RunEvent, RunStep
from runs.services.attempts import step_start, steps_start
from runs.tests.conftest import builtin_tool, tool_node
from runs.tests.factories import make_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def fan_out(cast: Any, settings: Any) -> Run:
    """A run of three independent tool steps, planned (all three queued, attempt 1); no
    worker takes part (the test's transaction never commits, so nothing is sent)."""
    settings.SPARKOPS_INLINE_STEPS = 0
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    nodes = [tool_node(f"n{i}", "calc", {"expression": "1"}) for i in range(3)]
    workflow = make_workflow(cast.project, cast.owner, nodes)
    run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
    services.run_enqueue(run_id=run.pk)
    assert set(RunStep.objects.filter(run=run).values_list("status", "attempt")) == {("queued", 1)}
    return Run.objects.get(pk=run.pk)


def steps(run: Run) -> dict[str, RunStep]:
    return {step.node_id: step for step in RunStep.objects.filter(run=run)}


def test_queued_steps_start_together_with_their_events_in_order(fan_out):
    before = Run.objects.get(pk=fan_out.pk).event_seq
    queued = steps(fan_out)
    wanted = [(queued[node].pk, 1) for node in ("n2", "n0", "n1")]
    started = steps_start(run_id=fan_out.pk, steps=wanted)
    assert sorted(step.node_id for step in started) == ["n0", "n1", "n2"]
    assert all(step.run.pk == fan_out.pk for step in started)
    now = steps(fan_out)
    assert {step.status for step in now.values()} == {"running"}
    assert len({step.started_at for step in now.values()}) == 1
    events = list(RunEvent.objects.filter(run=fan_out, seq__gt=before).order_by("seq"))
    assert [(e.node_id, e.payload["status"]) for e in events] == [
        (node, "running") for node in sorted(now, key=lambda node: now[node].pk)
    ]
    assert [e.seq for e in events] == [before + 1, before + 2, before + 3]
    assert Run.objects.get(pk=fan_out.pk).event_seq == before + 3


def test_a_stale_attempt_or_a_started_step_is_left_alone(fan_out):
    queued = steps(fan_out)
    RunStep.objects.filter(pk=queued["n1"].pk).update(status="running")
    started = steps_start(
        run_id=fan_out.pk,
        steps=[(queued["n0"].pk, 2), (queued["n1"].pk, 1), (queued["n2"].pk, 1)],
    )
    assert [step.node_id for step in started] == ["n2"]
    assert steps(fan_out)["n0"].status == "queued"


@pytest.mark.parametrize("stop", ["cancel_requested", "deadline"])
def test_a_cancelled_or_late_run_starts_nothing(fan_out, stop):
    if stop == "cancel_requested":
        Run.objects.filter(pk=fan_out.pk).update(cancel_requested=True)
    else:
        Run.objects.filter(pk=fan_out.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    before = Run.objects.get(pk=fan_out.pk).event_seq
    queued = steps(fan_out)
    assert steps_start(run_id=fan_out.pk, steps=[(s.pk, 1) for s in queued.values()]) == []
    assert {step.status for step in steps(fan_out).values()} == {"queued"}
    assert Run.objects.get(pk=fan_out.pk).event_seq == before


def test_a_message_start_tried_again_takes_up_the_steps_it_started(fan_out):
    """`steps_execute` gives its start one time. Tried again after the connection was lost as
    the statement committed, the statement starts nothing (all running), and each step goes
    the careful way with that time: taken up as this message's own start. Any other delivery
    (another time) finds them running and stops."""
    now = timezone.now()
    wanted = [(step.pk, 1) for step in steps(fan_out).values()]
    assert len(steps_start(run_id=fan_out.pk, steps=wanted, now=now)) == 3
    assert steps_start(run_id=fan_out.pk, steps=wanted, now=now) == []
    for step_id, attempt in wanted:
        other = now + timedelta(microseconds=1)
        assert step_start(step_id=step_id, attempt=attempt, now=other) is None
        taken = step_start(step_id=step_id, attempt=attempt, now=now)
        assert taken is not None and (taken.pk, taken.status) == (step_id, "running")
    events = RunEvent.objects.filter(run=fan_out, type="step.status", payload__status="running")
    assert events.count() == 3  # taken up: no second start, no second event
