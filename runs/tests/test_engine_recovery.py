"""What the database-first design buys: the sweeper starts runs whose first task was lost,
recovers steps whose worker went silent, re-sends lost and long-waiting steps; completions
are fenced by the attempt number and idempotent; concurrency limits admit runs in order."""

from __future__ import annotations

import contextlib
import itertools
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from runs import services
from runs.engine import heartbeat
from runs.models import Run, RunEvent, RunStep
from runs.services import attempts, dispatch, usage
from runs.tests.conftest import events_of, http_tool, sends_lost, tool_node, worker_idle
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")


def lost_run(cast, nodes, **workflow_fields):
    """A run committed to the database whose first task never reached the broker."""
    wf = make_workflow(cast.project, cast.owner, nodes, **workflow_fields)
    with sends_lost():
        run = services.run_create(workflow=wf, input={}, actor=cast.owner)
    return run


def put(run, *, status="running", ago=timedelta(minutes=2)):
    """Move a run to `status` as if a worker had started it `ago`."""
    then = timezone.now() - ago
    Run.objects.filter(pk=run.pk).update(
        status=status,
        queued_at=then,
        started_at=then,
        deadline=timezone.now() + timedelta(hours=1),
    )


def put_step(run, node_id, **fields):
    RunStep.objects.filter(run=run, node_id=node_id).update(**fields)
    return RunStep.objects.select_related("run__version", "run__project").get(
        run=run, node_id=node_id
    )


def sweep_until(predicate, what, timeout=20.0):
    def check():
        services.sweep()
        return predicate()

    return wait_until(check, timeout=timeout, interval=0.05, what=what)


def test_sweeper_starts_a_run_whose_first_task_was_lost(cast, settings):
    settings.SPARKOPS_QUEUED_GRACE = 0
    run = lost_run(cast, [transform("a", 1), transform("b", "{{ steps.a.output + 1 }}", "a")])
    assert Run.objects.get(pk=run.pk).status == "pending"
    counts = services.sweep()
    assert counts["enqueued"] == 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="b").output == 2
    assert [e.payload["status"] for e in events_of(run, "run.status")] == [
        "pending",
        "queued",
        "running",
        "succeeded",
    ]


def test_a_fresh_pending_run_is_left_to_its_own_task(cast):
    # Within the grace period the first task may simply not have been delivered yet.
    run = lost_run(cast, [transform("a", 1)])
    assert services.sweep()["enqueued"] == 0
    assert Run.objects.get(pk=run.pk).status == "pending"


def test_sweeper_recovers_a_step_whose_worker_went_silent(cast):
    run = lost_run(cast, [transform("a", "{{ run.id }}"), transform("b", 2, "a")])
    put(run)
    long_ago = timezone.now() - timedelta(minutes=2)
    stale = put_step(
        run,
        "a",
        status="running",
        attempt=1,
        queued_at=long_ago,
        started_at=long_ago,
        heartbeat_at=long_ago,
        worker="dead-host:1",
    )

    counts = services.sweep()
    assert counts["steps_recovered"] == 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    a = run.steps.get(node_id="a")
    assert (a.attempt, a.failures) == (2, 0)  # a new attempt, not a failure
    assert a.output == str(run.pk)
    (recovered,) = [e for e in events_of(run, "step.status", "a") if e.payload.get("recovered")]
    assert recovered.attempt == 1
    assert recovered.payload["reason"] == "heartbeat lost"

    # The lost worker comes back with its result: fenced off by the attempt number.
    assert attempts.step_succeed(step=stale, attempt=1, output="late") is False
    a.refresh_from_db()
    assert a.output == str(run.pk)
    assert [e.payload["status"] for e in events_of(run, "step.status", "a")].count("succeeded") == 1
    assert Run.objects.get(pk=run.pk).status == "succeeded"


def test_a_live_step_is_not_recovered(cast):
    run = lost_run(cast, [transform("a", 1)])
    put(run)
    put_step(
        run,
        "a",
        status="running",
        attempt=1,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    counts = services.sweep()
    assert counts["steps_recovered"] == 0
    assert counts["steps_timed_out"] == 0
    assert RunStep.objects.get(run=run, node_id="a").attempt == 1


def test_one_update_refreshes_the_heartbeats_of_a_workers_running_steps(
    cast, django_assert_num_queries
):
    """A gevent steps worker has hundreds of steps in flight: its heartbeat is one UPDATE per
    attempt number in flight, not one per step; a superseded attempt is not refreshed."""
    run = lost_run(cast, [transform(node, 1) for node in "abcd"])
    put(run)
    long_ago = timezone.now() - timedelta(minutes=2)
    steps = {
        node: put_step(run, node, status="running", attempt=attempt, heartbeat_at=long_ago)
        for node, attempt in (("a", 1), ("b", 1), ("c", 1), ("d", 2))
    }
    with contextlib.ExitStack() as stack:
        for node in "abcd":  # d's worker still runs its first attempt: superseded
            stack.enter_context(heartbeat.beating(steps[node].pk, 1))
        # the UPDATE of the attempt-1 steps
        with django_assert_num_queries(1):
            heartbeat._beat_once()
    beats = dict(RunStep.objects.filter(run=run).values_list("node_id", "heartbeat_at"))
    assert all(beats[node] > long_ago for node in "abc")
    assert beats["d"] == long_ago


def test_sweeper_fails_a_step_stuck_past_its_timeout(cast):
    run = lost_run(cast, [transform("a", 1, timeout_seconds=1)])
    put(run)
    put_step(
        run,
        "a",
        status="running",
        attempt=1,
        started_at=timezone.now() - timedelta(minutes=5),
        heartbeat_at=timezone.now(),  # alive, but stuck in a call
    )
    assert services.sweep()["steps_timed_out"] == 1
    run = Run.objects.get(pk=run.pk)
    assert run.status == "failed"
    assert run.steps.get(node_id="a").error["type"] == "timeout"


def test_completion_is_idempotent_and_charges_once(cast):
    run = lost_run(cast, [transform("a", 1)])
    put(run)
    step = put_step(
        run,
        "a",
        status="running",
        attempt=1,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )

    def charge():
        usage.usage_record(
            step=step,
            attempt=1,
            input_tokens=10,
            output_tokens=5,
            cost=Decimal("0.25"),
            event={"type": RunEvent.Type.LLM_CALL, "payload": {"model": "m"}},
        )

    charge()
    assert attempts.step_succeed(step=step, attempt=1, output={"v": 1}) is True
    # A re-delivered task finishing the same attempt again: no-op.
    assert attempts.step_succeed(step=step, attempt=1, output={"v": 2}) is False
    with pytest.raises(services.StepSuperseded):
        charge()  # a duplicate can no longer charge
    services.step_execute(step_id=step.pk, attempt=1)  # nor run again

    run = Run.objects.get(pk=run.pk)
    assert run.status == "succeeded"
    assert run.steps.get(node_id="a").output == {"v": 1}
    assert (run.input_tokens, run.output_tokens, run.cost) == (10, 5, Decimal("0.25"))
    assert len(events_of(run, "llm.call")) == 1
    statuses = [e.payload["status"] for e in events_of(run, "step.status", "a")]
    assert statuses.count("succeeded") == 1
    assert [e.payload["status"] for e in events_of(run, "run.status")].count("succeeded") == 1


def test_failure_of_a_finished_attempt_is_a_no_op(cast):
    run = lost_run(cast, [transform("a", 1)])
    put(run)
    step = put_step(
        run,
        "a",
        status="running",
        attempt=1,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    assert attempts.step_succeed(step=step, attempt=1, output=1) is True
    error = services.StepError("tool_error", "late failure", retryable=True)
    assert attempts.step_fail(step=step, attempt=1, error=error) is False
    step.refresh_from_db()
    assert (step.status, step.error, step.failures) == ("succeeded", None, 0)


def test_a_stale_attempt_is_a_no_op_and_duplicates_run_once(cast):
    run = lost_run(cast, [transform("a", "{{ run.id }}")])
    put(run)
    step = put_step(run, "a", status="queued", attempt=2, queued_at=timezone.now())
    before = RunEvent.objects.filter(run=run).count()

    services.step_execute(step_id=step.pk, attempt=1)  # a delivery of an older attempt
    step.refresh_from_db()
    assert (step.status, step.attempt) == ("queued", 2)
    assert RunEvent.objects.filter(run=run).count() == before

    # The current attempt delivered twice (at-least-once): it runs once.
    with transaction.atomic():
        dispatch.send_step(step.pk, 2)
        dispatch.send_step(step.pk, 2)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    statuses = [e.payload["status"] for e in events_of(run, "step.status", "a")]
    assert statuses.count("running") == 1
    assert statuses.count("succeeded") == 1


def test_sweeper_resends_a_queued_step_whose_message_was_lost(cast):
    run = lost_run(cast, [transform("a", 1), transform("b", 2, "a")])
    put(run)
    put_step(run, "a", status="queued", attempt=1, queued_at=timezone.now() - timedelta(minutes=2))
    counts = services.sweep()
    assert counts["steps_resent"] == 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="a").attempt == 1


def test_long_retry_waits_in_the_database_for_the_sweeper(cast, tool_server, settings):
    # Any wait longer than this rides no Celery countdown (an ETA past Redis' visibility
    # timeout would be delivered twice): the step waits in the database.
    settings.SPARKOPS_RETRY_COUNTDOWN_MAX = 0
    url = tool_server.route("/flaky", tool_server.failing(1))
    http_tool(cast.project, cast.owner, "flaky", url)
    wf = make_workflow(
        cast.project,
        cast.owner,
        [tool_node("call", "flaky", retry={"max_attempts": 2, "backoff_seconds": 0.2})],
    )
    run = services.run_create(workflow=wf, input={}, actor=cast.owner)
    waiting = wait_until(
        lambda: RunStep.objects.filter(run=run, failures=1, status="queued").first(),
        what="the failed attempt to be re-queued",
    )
    assert waiting.attempt == 2
    assert waiting.next_attempt_at > waiting.queued_at
    run = sweep_until(
        lambda: Run.objects.filter(pk=run.pk, status="succeeded").first(),
        "the sweeper to send the due retry",
    )
    step = run.steps.get(node_id="call")
    assert (step.attempt, step.failures) == (2, 1)
    assert step.started_at >= waiting.next_attempt_at - timedelta(seconds=0.5)
    assert len(tool_server.calls("/flaky")) == 2


def test_max_concurrent_runs_admits_one_at_a_time_in_order(cast, tool_server):
    url = tool_server.route("/work", tool_server.slow(0.3))
    http_tool(cast.project, cast.owner, "work", url)
    wf = make_workflow(
        cast.project,
        cast.owner,
        [tool_node("work", "work", {"n": "{{ input.n }}"})],
        max_concurrent_runs=1,
    )
    runs = [services.run_create(workflow=wf, input={"n": n}, actor=cast.owner) for n in range(3)]
    finished = [wait_for_run(run.pk, timeout=30) for run in runs]
    assert [run.status for run in finished] == ["succeeded"] * 3
    assert tool_server.max_in_flight["/work"] == 1
    assert [hit.body["n"] for hit in tool_server.calls("/work")] == [0, 1, 2]
    for earlier, later in itertools.pairwise(finished):
        assert earlier.started_at < later.started_at
        assert earlier.finished_at <= later.started_at  # never two at once


def test_a_late_admission_makes_room_for_the_next_waiting_run(cast, tool_server):
    # Two may run at once, and the two calls only answer once both are in progress.
    url = tool_server.route("/pair", tool_server.gather(2, timeout=10))
    http_tool(cast.project, cast.owner, "pair", url)
    wf = make_workflow(cast.project, cast.owner, [tool_node("work", "pair")], max_concurrent_runs=2)
    with sends_lost():
        first = services.run_create(workflow=wf, input={}, actor=cast.owner)
    second = services.run_create(workflow=wf, input={}, actor=cast.owner)
    # The second waits behind the older, still pending, first (FIFO)...
    wait_until(lambda: Run.objects.filter(pk=second.pk, status="queued").exists())
    wait_until(worker_idle, what="the second run's planning to end")
    assert Run.objects.get(pk=second.pk).started_at is None
    # ...until the first's task finally arrives: admitting it leaves room for the second.
    services.run_enqueue(run_id=first.pk)
    finished = [wait_for_run(run.pk, timeout=30) for run in (first, second)]
    assert [run.status for run in finished] == ["succeeded", "succeeded"]
    assert [hit.body for hit in tool_server.calls("/pair")] == [{}, {}]
    outputs = [run.steps.get().output for run in finished]
    assert [output["together"] for output in outputs] == [True, True]
