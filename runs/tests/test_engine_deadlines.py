"""A run's deadline (`timeout_seconds`), enforced by the engine itself and not only by the
sweeper: a step's calls wait at most until the deadline, no step starts after it, and a result
that arrives after it is discarded, the run ending `timed_out` (the rule of Temporal's workflow
execution timeout). No test here calls the sweeper."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from runs import services
from runs.models import Run, RunStep
from runs.services import attempts
from runs.tests.conftest import events_of, http_tool, sends_lost, tool_node
from runs.tests.factories import make_workflow, transform
from runs.tests.test_engine_agents import make_agent
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")


def received_at(hit) -> float:
    """A tool-server hit's arrival as a Unix timestamp (hits record monotonic time)."""
    return hit.at + (time.time() - time.monotonic())


def statuses(run, node_id):
    return [e.payload["status"] for e in events_of(run, "step.status", node_id)]


def test_a_run_with_a_3s_deadline_and_a_20s_step_is_timed_out_within_4s(cast, tool_server):
    url = tool_server.route("/slow", tool_server.slow(20))
    http_tool(cast.project, cast.owner, "slow", url)
    wf = make_workflow(cast.project, cast.owner, [tool_node("call", "slow")], timeout_seconds=3)
    run = services.run_create(workflow=wf, input={}, actor=cast.owner)

    run = wait_for_run(run.pk, timeout=15)
    assert run.status == "timed_out"
    assert run.error["type"] == "timed_out"
    assert run.deadline == run.started_at + timedelta(seconds=3)
    assert run.finished_at >= run.deadline
    assert (run.finished_at - run.started_at).total_seconds() <= 4.0
    step = run.steps.get(node_id="call")
    assert (step.status, step.output) == ("cancelled", None)
    assert statuses(run, "call") == ["queued", "running", "cancelled"]
    # the call was made once and cut at the deadline; what it recorded is kept
    (hit,) = tool_server.calls("/slow")
    assert received_at(hit) < run.deadline.timestamp()
    (call,) = events_of(run, "tool.call")
    assert call.payload["ok"] is False
    assert [e.payload["status"] for e in events_of(run, "run.status")][-1] == "timed_out"


def test_a_step_that_gets_a_worker_after_the_deadline_makes_no_call(cast, tool_server, engine):
    # Every worker thread is held by other runs' calls while four runs with a 1 s deadline
    # are started (planned here): their steps get a thread only after their deadline.
    release = threading.Event()
    hold = tool_server.route("/hold", tool_server.slow(30, release))
    url = tool_server.route("/slow", tool_server.slow(20))
    http_tool(cast.project, cast.owner, "hold", hold)
    http_tool(cast.project, cast.owner, "slow", url)
    holding = make_workflow(cast.project, cast.owner, [tool_node("call", "hold")], name="hold")
    late = make_workflow(
        cast.project, cast.owner, [tool_node("call", "slow")], name="late", timeout_seconds=1
    )
    threads = engine.concurrency
    blockers = [
        services.run_create(workflow=holding, input={}, actor=cast.owner) for _ in range(threads)
    ]
    try:
        wait_until(lambda: len(tool_server.calls("/hold")) == threads, what="threads held")
        with sends_lost():
            runs = [services.run_create(workflow=late, input={}, actor=cast.owner) for _ in "abcd"]
        for run in runs:
            services.run_enqueue(run_id=run.pk)
        deadline = max(
            Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("deadline", flat=True)
        )
        wait_until(lambda: timezone.now() > deadline, what="the deadlines to pass")
    finally:
        release.set()
    finished = [wait_for_run(run.pk) for run in runs]
    assert [run.status for run in finished] == ["timed_out"] * 4
    assert tool_server.calls("/slow") == []
    for run in finished:
        assert statuses(run, "call") == ["queued", "cancelled"]  # never running
    for run in blockers:
        assert wait_for_run(run.pk).status == "succeeded"


def test_a_last_step_that_would_end_after_the_deadline_times_the_run_out(cast, tool_server):
    # Three 0.8 s calls in a row under a 2 s deadline: the third is cut at the deadline and
    # the run ends timed_out instead of succeeding late.
    url = tool_server.route("/work", tool_server.slow(0.8))
    http_tool(cast.project, cast.owner, "work", url)
    wf = make_workflow(
        cast.project,
        cast.owner,
        [tool_node("a", "work"), tool_node("b", "work", {}, "a"), tool_node("c", "work", {}, "b")],
        timeout_seconds=2,
    )
    run = wait_for_run(services.run_create(workflow=wf, input={}, actor=cast.owner).pk)
    assert run.status == "timed_out", run.error
    assert (run.finished_at - run.deadline).total_seconds() < 1.0
    steps = {step.node_id: step for step in run.steps.all()}
    assert steps["a"].status == "succeeded"
    assert steps["c"].status == "cancelled"
    assert all(received_at(hit) < run.deadline.timestamp() for hit in tool_server.calls("/work"))


def test_a_model_call_waits_no_longer_than_the_run(cast, fake_llm):
    make_agent(cast, fake_llm, "openai")
    fake_llm.enqueue("openai", {"content": "too late", "delay": 20})
    node = {"id": "think", "type": "agent", "agent": "helper", "prompt": "{{ input.topic }}"}
    # the step's own timeout (600 s) and the model's (the default 60 s) are both longer
    wf = make_workflow(
        cast.project, cast.owner, [{**node, "timeout_seconds": 600}], timeout_seconds=2
    )
    run = services.run_create(workflow=wf, input={"topic": "otters"}, actor=cast.owner)
    run = wait_for_run(run.pk, timeout=15)
    assert run.status == "timed_out", run.error
    assert (run.finished_at - run.started_at).total_seconds() < 3.0
    assert len(fake_llm.requests_for("openai")) == 1
    assert run.steps.get().status == "cancelled"


# --- the rule at each point where the engine acts (services called directly) ----------------


def running_past_its_deadline(cast, nodes, step_status="running"):
    """A run committed as if a worker had started it and its first step, now past its
    deadline; nothing was sent (no worker touches it)."""
    wf = make_workflow(cast.project, cast.owner, nodes)
    with sends_lost():
        run = services.run_create(workflow=wf, input={}, actor=cast.owner)
    then = timezone.now() - timedelta(seconds=10)
    Run.objects.filter(pk=run.pk).update(
        status="running", queued_at=then, started_at=then, deadline=then + timedelta(seconds=5)
    )
    RunStep.objects.filter(run=run, node_id=nodes[0]["id"]).update(
        status=step_status, attempt=1, queued_at=then, started_at=then, heartbeat_at=then
    )
    return run, RunStep.objects.select_related("run").get(run=run, node_id=nodes[0]["id"])


def test_a_result_after_the_deadline_is_discarded(cast):
    run, step = running_past_its_deadline(cast, [transform("a", 1), transform("b", 2, "a")])
    assert attempts.step_succeed(step=step, attempt=1, output={"late": True}) is False
    run.refresh_from_db()
    assert (run.status, run.error["type"]) == ("timed_out", "timed_out")
    assert {s.node_id: (s.status, s.output) for s in run.steps.all()} == {
        "a": ("cancelled", None),
        "b": ("cancelled", None),
    }
    assert "succeeded" not in statuses(run, "a")


def test_a_failure_after_the_deadline_is_not_retried(cast):
    run, step = running_past_its_deadline(
        cast, [transform("a", 1, retry={"max_attempts": 5, "backoff_seconds": 0})]
    )
    error = services.StepError("tool_error", "late failure", retryable=True)
    assert attempts.step_fail(step=step, attempt=1, error=error) is True
    run.refresh_from_db()
    assert run.status == "timed_out"
    assert run.steps.get().attempt == 1  # not queued again


def test_a_step_due_after_the_deadline_does_not_start(cast, tool_server):
    url = tool_server.route("/call", tool_server.slow(0))
    http_tool(cast.project, cast.owner, "call", url)
    run, step = running_past_its_deadline(cast, [tool_node("call", "call")], step_status="queued")
    services.step_execute(step_id=step.pk, attempt=1)
    run.refresh_from_db()
    assert run.status == "timed_out"
    assert tool_server.calls("/call") == []
    assert statuses(run, "call") == ["cancelled"]


def test_planning_after_the_deadline_times_the_run_out(cast):
    run, step = running_past_its_deadline(cast, [transform("a", 1), transform("b", 2, "a")])
    RunStep.objects.filter(pk=step.pk).update(status="succeeded", output=1)
    services.run_advance(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "timed_out"
    assert run.steps.get(node_id="b").status == "cancelled"  # never ran inline
