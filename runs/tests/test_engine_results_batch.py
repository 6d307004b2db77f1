"""Group commit of step results, against the database: `attempts._write_results` writes a batch
of one run's results in one transaction (each fenced by its attempt and the step being
running, all by the run's deadline), appends one `step.status` succeeded event per result
that moved (after what its checkpoint deferred), and plans the run once: when a result has
successors, or nothing else is in flight; otherwise it only appends the events.

The tests build a run committed as if a worker had started its steps (nothing was sent: no
worker touches it), call `_write_results` with several results of that run, and read what was
committed (`transaction=True`: the code's own transaction commits for real). The last test
goes through `step_succeed` from several threads, as a worker's pool does."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from runs import services
from runs.engine.checkpoint import Checkpoint
from runs.models import Run, RunEvent, RunStep
from runs.services import attempts
from runs.services.attempts import _Result, _write_results
from runs.services.completions import Waiting
from runs.tests.conftest import builtin_tool, events_of, sends_lost, tool_node
from runs.tests.factories import make_workflow, transform
from runs.tests.test_engine_inline import assert_gap_free
from sparkops.testing.engine import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

STARTED_AGO = timedelta(seconds=10)


# --- helpers --------------------------------------------------------------------------------------


def running_run(
    cast: Any,
    nodes: list[dict[str, Any]],
    running: Iterable[str],
    *,
    succeeded: dict[str, Any] | None = None,
    deadline_in: timedelta = timedelta(hours=1),
    **workflow_fields: Any,
) -> tuple[Run, dict[str, RunStep]]:
    """A run committed as if a worker had started it and the steps `running` (attempt 1)
    `STARTED_AGO`, the steps of `succeeded` done with those outputs, its deadline `deadline_in`
    from now; nothing was sent."""
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    wf = make_workflow(cast.project, cast.owner, nodes, **workflow_fields)
    with sends_lost():
        run = services.run_create(workflow=wf, input={}, actor=cast.owner)
    now = timezone.now()
    then = now - STARTED_AGO
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.RUNNING, queued_at=then, started_at=then, deadline=now + deadline_in
    )
    RunStep.objects.filter(run=run, node_id__in=list(running)).update(
        status=RunStep.Status.RUNNING,
        attempt=1,
        queued_at=then,
        started_at=then,
        heartbeat_at=then,
        worker="host:1",
    )
    for node_id, output in (succeeded or {}).items():
        RunStep.objects.filter(run=run, node_id=node_id).update(
            status=RunStep.Status.SUCCEEDED,
            attempt=1,
            output=output,
            queued_at=then,
            started_at=then,
            finished_at=then,
        )
    return Run.objects.get(pk=run.pk), steps_of(run)


def steps_of(run: Run) -> dict[str, RunStep]:
    steps = RunStep.objects.filter(run_id=run.pk).select_related("run")
    return {step.node_id: step for step in steps}


def result(
    step: RunStep,
    output: Any,
    *,
    attempt: int = 1,
    fields: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> Waiting[_Result]:
    return Waiting(_Result(step, attempt, output, fields or {}, events or []))


def outcomes(batch: list[Waiting[_Result]]) -> list[bool]:
    return [waiting.result() for waiting in batch]


def trail(run: Run) -> list[tuple[str, str, str | None]]:
    """(type, node id, status) of the run's events, in order."""
    return [(e.type, e.node_id, e.payload.get("status")) for e in events_of(run)]


def succeeded_events(run: Run) -> list[RunEvent]:
    return [e for e in events_of(run, "step.status") if e.payload["status"] == "succeeded"]


def fan_out(count: int) -> list[dict[str, Any]]:
    """`count` tool steps f0..f{count-1} that depend on nothing and nothing depends on."""
    return [tool_node(f"f{i}", "noop", {"i": i}) for i in range(count)]


# --- a whole fan-out in one batch ---------------------------------------------------------------


def test_a_fan_out_written_in_one_batch_succeeds_every_step_and_finishes_the_run(cast):
    names = [f"f{i}" for i in range(5)]
    run, steps = running_run(
        cast,
        fan_out(5),
        running=names,
        output={"first": "{{ steps.f0.output }}", "last": "{{ steps.f4.output }}"},
    )
    before = RunEvent.objects.filter(run=run).count()
    # Outputs of every JSON kind, text an array literal would have to quote among them.
    outputs: dict[str, Any] = {
        "f0": {"i": 0, "of": "f0"},
        "f1": 'a "quoted" {brace}, comma; back\\slash \\" NULL é ☃ \n',
        "f2": [1, 2.5, None, True, "NULL", "}", {"k": ["{", ","]}],
        "f3": 0,
        "f4": {"i": 4, "of": "f4"},
    }
    batch = [result(steps[name], outputs[name]) for name in names]

    _write_results(batch)

    assert outcomes(batch) == [True] * 5
    written = steps_of(run)
    for name in names:
        step = written[name]
        assert (step.status, step.attempt, step.output) == ("succeeded", 1, outputs[name])
        assert step.error is None and step.state is None
    # One statement: one time for them all.
    assert len({written[name].finished_at for name in names}) == 1

    # One succeeded event per step, of its attempt, in the batch's order; then the run's end.
    done = succeeded_events(run)
    assert [e.node_id for e in done] == names
    assert all(e.attempt == 1 for e in done)
    assert all(e.payload["duration_ms"] >= STARTED_AGO.total_seconds() * 1000 for e in done)
    assert trail(run)[before:] == [
        *(("step.status", name, "succeeded") for name in names),
        ("run.status", "", "succeeded"),
    ]
    assert_gap_free(run)

    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.output == {"first": {"i": 0, "of": "f0"}, "last": {"i": 4, "of": "f4"}}


def test_a_stale_attempt_in_a_batch_is_left_alone_and_the_others_are_written(cast):
    run, steps = running_run(cast, fan_out(3), running=["f0", "f1", "f2"])
    # f1 was recovered meanwhile: its current attempt is the second.
    RunStep.objects.filter(pk=steps["f1"].pk).update(attempt=2)
    before = RunEvent.objects.filter(run=run).count()
    batch = [result(steps[name], name) for name in ("f0", "f1", "f2")]

    _write_results(batch)

    assert outcomes(batch) == [True, False, True]
    written = steps_of(run)
    assert {name: (s.status, s.attempt, s.output) for name, s in written.items()} == {
        "f0": ("succeeded", 1, "f0"),
        "f1": ("running", 2, None),
        "f2": ("succeeded", 1, "f2"),
    }
    assert written["f1"].finished_at is None
    # Events of the two that moved only; f1's current attempt is still in flight.
    assert trail(run)[before:] == [
        ("step.status", "f0", "succeeded"),
        ("step.status", "f2", "succeeded"),
    ]
    assert Run.objects.get(pk=run.pk).status == "running"
    assert_gap_free(run)

    # f1's current attempt ends: the last in flight, so the run finishes.
    late = [result(written["f1"], "f1 again", attempt=2)]
    _write_results(late)
    assert outcomes(late) == [True]
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert steps_of(run)["f1"].output == "f1 again"
    assert [e.node_id for e in succeeded_events(run)] == ["f0", "f2", "f1"]
    assert_gap_free(run)


def test_a_stale_and_the_current_attempt_of_one_step_in_one_batch(cast):
    """A worker the sweeper thought lost (its step re-queued as attempt 2) finishes attempt 1
    at the same time as the worker of attempt 2: only attempt 2's result is written, and only
    it is reported written (as when the two are written one after the other)."""
    run, steps = running_run(cast, fan_out(2), running=["f0", "f1"])
    RunStep.objects.filter(pk=steps["f0"].pk).update(attempt=2)
    before = RunEvent.objects.filter(run=run).count()
    batch = [
        result(steps["f0"], "stale", attempt=1),
        result(steps["f0"], "current", attempt=2),
    ]

    _write_results(batch)

    f0 = steps_of(run)["f0"]
    assert (f0.status, f0.attempt, f0.output) == ("succeeded", 2, "current")
    assert outcomes(batch) == [False, True]
    assert [(e.node_id, e.attempt) for e in events_of(run)[before:]] == [("f0", 2)]


def test_a_batch_after_the_deadline_moves_nothing_and_times_the_run_out(cast):
    names = ["f0", "f1", "f2"]
    run, steps = running_run(cast, fan_out(3), running=names, deadline_in=timedelta(seconds=-1))
    # What f0's attempt recorded on the way is kept.
    call = {
        "type": RunEvent.Type.TOOL_CALL,
        "node_id": "f0",
        "attempt": 1,
        "payload": {"tool": "noop", "ok": True},
    }
    batch = [result(steps[name], {"late": name}) for name in names]
    batch[0].item.events.append(call)

    _write_results(batch)

    assert outcomes(batch) == [False, False, False]
    run.refresh_from_db()
    assert run.status == "timed_out"
    assert run.error["type"] == "timed_out"
    cancelled = dict.fromkeys(names, ("cancelled", None))
    assert {name: (s.status, s.output) for name, s in steps_of(run).items()} == cancelled
    assert not succeeded_events(run)
    assert [e.payload["status"] for e in events_of(run, "run.status")].count("timed_out") == 1
    (kept,) = events_of(run, "tool.call")
    assert (kept.node_id, kept.attempt, kept.payload) == ("f0", 1, call["payload"])
    assert_gap_free(run)


# --- planning once, or not at all ---------------------------------------------------------------


def test_results_without_successors_while_others_run_only_append_their_events(cast):
    """f0 and f1 end while `busy` still runs: their events are appended and the run is not
    planned (`later`, ready since `pre` ended, stays pending), until the last in flight ends."""
    nodes = [
        transform("pre", 1),
        transform("later", "{{ steps.pre.output + 1 }}", "pre"),
        *fan_out(2),
        tool_node("busy", "noop", {"i": 9}),
    ]
    run, steps = running_run(
        cast,
        nodes,
        running=["f0", "f1", "busy"],
        succeeded={"pre": 1},
        output={"later": "{{ steps.later.output }}"},
    )
    before = RunEvent.objects.filter(run=run).count()
    batch = [result(steps["f0"], 0), result(steps["f1"], 1)]

    _write_results(batch)

    assert outcomes(batch) == [True, True]
    assert {name: s.status for name, s in steps_of(run).items()} == {
        "pre": "succeeded",
        "later": "pending",  # not planned
        "f0": "succeeded",
        "f1": "succeeded",
        "busy": "running",
    }
    assert trail(run)[before:] == [
        ("step.status", "f0", "succeeded"),
        ("step.status", "f1", "succeeded"),
    ]
    assert Run.objects.get(pk=run.pk).status == "running"
    assert_gap_free(run)

    # The last one in flight plans: `later` runs (inline) and the run finishes.
    last = [result(steps["busy"], 9)]
    _write_results(last)
    assert outcomes(last) == [True]
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.output == {"later": 2}
    assert steps_of(run)["later"].status == "succeeded"
    assert_gap_free(run)


def test_a_result_with_a_successor_plans_the_run_once_for_the_batch(cast):
    """f0 has a successor: the batch plans even though `busy` still runs, and the successor's
    events follow the batch's."""
    nodes = [
        *fan_out(2),
        transform("next", "{{ steps.f0.output.i + 10 }}", "f0"),
        tool_node("busy", "noop", {"i": 9}),
    ]
    run, steps = running_run(cast, nodes, running=["f0", "f1", "busy"])
    before = RunEvent.objects.filter(run=run).count()
    batch = [result(steps["f0"], {"i": 0}), result(steps["f1"], {"i": 1})]

    _write_results(batch)

    assert outcomes(batch) == [True, True]
    written = steps_of(run)
    assert (written["next"].status, written["next"].output) == ("succeeded", 10)
    assert written["busy"].status == "running"
    assert Run.objects.get(pk=run.pk).status == "running"
    log = trail(run)[before:]
    assert log[:2] == [("step.status", "f0", "succeeded"), ("step.status", "f1", "succeeded")]
    assert [status for _, node_id, status in log[2:] if node_id == "next"] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert not any(node_id == "" for _, node_id, _ in log)  # the run did not finish
    assert_gap_free(run)


# --- what the checkpoint deferred -----------------------------------------------------------------


def test_a_results_deferred_input_and_events_are_written_with_it(cast):
    run, steps = running_run(cast, fan_out(3), running=["f0", "f1", "f2"])
    inputs_before = {name: step.input for name, step in steps.items()}
    before = RunEvent.objects.filter(run=run).count()

    # f0 and f2: what a tool step's checkpoint defers (its rendered input and its call's
    # event); f1 deferred nothing.
    deferred: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for name, arguments in (("f0", {"i": 0, "rendered": True}), ("f2", {"i": 2})):
        checkpoint = Checkpoint(steps[name], 1, 60.0, deferred_writes=True)
        checkpoint.record_input(arguments)
        checkpoint.event(RunEvent.Type.TOOL_CALL, {"tool": "noop", "arguments": arguments})
        deferred[name] = checkpoint.deferred()
    batch = [
        result(steps["f0"], "r0", fields=deferred["f0"][0], events=deferred["f0"][1]),
        result(steps["f1"], "r1"),
        result(steps["f2"], "r2", fields=deferred["f2"][0], events=deferred["f2"][1]),
    ]

    _write_results(batch)

    assert outcomes(batch) == [True, True, True]
    written = steps_of(run)
    assert written["f0"].input == {"i": 0, "rendered": True}
    assert written["f1"].input == inputs_before["f1"]  # left as it was
    assert written["f2"].input == {"i": 2}
    assert {s.status for s in written.values()} == {"succeeded"}
    assert {name: s.output for name, s in written.items()} == {"f0": "r0", "f1": "r1", "f2": "r2"}
    # Each result's deferred events come right before its succeeded event.
    assert trail(run)[before:] == [
        ("tool.call", "f0", None),
        ("step.status", "f0", "succeeded"),
        ("step.status", "f1", "succeeded"),
        ("tool.call", "f2", None),
        ("step.status", "f2", "succeeded"),
        ("run.status", "", "succeeded"),
    ]
    (call_f0,) = events_of(run, "tool.call", "f0")
    assert call_f0.attempt == 1
    assert call_f0.payload == {"tool": "noop", "arguments": {"i": 0, "rendered": True}}
    assert_gap_free(run)


# --- through step_succeed, from several threads ---------------------------------------------------


def test_results_that_end_while_a_write_waits_are_written_in_one_batch(cast):
    """step_succeed from several threads (a worker's pool): while the first one's write waits
    for the run's lock (this test holds it), the others queue; released, the first writes its
    result alone and the next writes all the others in one transaction. The run ends once."""
    count = 6
    names = [f"f{i}" for i in range(count)]
    run, steps = running_run(cast, fan_out(count), running=names)
    returned: dict[str, bool] = {}
    errors: dict[str, BaseException] = {}
    lock = threading.Lock()

    def succeed(name: str) -> None:
        try:
            ok = attempts.step_succeed(step=steps[name], attempt=1, output={"from": name})
            with lock:
                returned[name] = ok
        except BaseException as exc:  # asserted below
            with lock:
                errors[name] = exc
        finally:
            connection.close()

    def waiting() -> list[str]:
        with attempts._results._lock:
            return [w.item.step.node_id for w in attempts._results._waiting.get(run.pk, [])]

    threads = [threading.Thread(target=succeed, args=(name,), daemon=True) for name in names]
    try:
        with transaction.atomic():
            Run.objects.select_for_update().get(pk=run.pk)  # the first write waits on this
            for thread in threads:
                thread.start()
            # One thread writes (blocked on the lock), the others wait behind it.
            wait_until(lambda: len(waiting()) == count - 1, timeout=10, what="the others to queue")
            queued = waiting()
            assert not returned and not errors
    finally:
        # Don't let a thread outlive a failure: `atomic` above has released the lock.
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)

    assert errors == {}
    assert returned == dict.fromkeys(names, True)
    (first,) = set(names) - set(queued)
    written = steps_of(run)
    assert {name: s.output for name, s in written.items()} == {n: {"from": n} for n in names}
    # The queued ones were written by one statement, after the first one's.
    assert len({written[name].finished_at for name in queued}) == 1
    assert written[first].finished_at <= written[queued[0]].finished_at
    done = succeeded_events(run)
    assert [e.node_id for e in done] == [first, *queued]  # the batch's order: the queue's
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert [e.payload["status"] for e in events_of(run, "run.status")].count("succeeded") == 1
    assert run.pk not in attempts._results._waiting  # no write of the run left in progress
    assert_gap_free(run)
