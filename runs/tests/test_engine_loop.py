"""`loop` nodes on a real Celery worker: iterations until a condition, each reading the previous
output and recorded as a step row; max_iterations; a failed iteration; per-iteration retries;
a workflow body; cancel; resume from failure."""

from __future__ import annotations

import threading

import pytest

from runs import services
from runs.models import Run
from runs.tests.conftest import events_of, http_tool
from runs.tests.factories import make_workflow, transform
from sparkops.errors import InvalidInput
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")

FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.05, "max_backoff_seconds": 0.1}


def start(workflow, actor, input=None):
    return services.run_create(workflow=workflow, input=input or {}, actor=actor)


def loop(id, body, until, *depends_on, **fields):
    return {
        "id": id,
        "type": "loop",
        "node": body,
        "until": until,
        "depends_on": list(depends_on),
        **fields,
    }


def iterations(run, loop_id="refine"):
    return list(
        run.steps.filter(item_index__isnull=False, node_id__startswith=f"{loop_id}[")
        .order_by("item_index")
        .values_list("node_id", "status", "item", "output")
    )


def test_each_iteration_reads_the_previous_until_the_condition_holds(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("seed", "{{ input.start }}"),
            loop(
                "refine",
                {"type": "transform", "output": "{{ (previous or steps.seed.output) * 2 }}"},
                "{{ output >= 40 }}",
                "seed",
                max_iterations=10,
            ),
            transform("after", "{{ steps.refine.output }}!", "refine"),
        ],
        output="{{ steps.after.output }}",
    )
    run = wait_for_run(start(wf, cast.owner, {"start": 3}).pk)
    assert run.status == "succeeded", run.error
    assert run.output == "48!"
    assert iterations(run) == [
        ("refine[0]", "succeeded", None, 6),
        ("refine[1]", "succeeded", 6, 12),
        ("refine[2]", "succeeded", 12, 24),
        ("refine[3]", "succeeded", 24, 48),
    ]
    step = run.steps.get(node_id="refine")
    assert (step.status, step.output, step.input) == ("succeeded", 48, {"iterations": 4})
    done = [e.payload for e in events_of(run, "step.status", "refine")][-1]
    assert done == {"status": "succeeded", "iterations": 4}


def test_max_iterations_fails_the_loop(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            loop(
                "refine",
                {"type": "transform", "output": "{{ iteration }}"},
                "{{ output > 100 }}",
                max_iterations=3,
            )
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    error = run.steps.get(node_id="refine").error
    assert error == {
        "type": "max_iterations",
        "message": "Loop 'refine' ran 3 iterations (max_iterations) and `until` never held.",
    }
    assert [row[3] for row in iterations(run)] == [0, 1, 2]
    with pytest.raises(InvalidInput) as exc_info:
        make_workflow(
            cast.project,
            cast.owner,
            [loop("x", {"type": "transform", "output": 1}, "{{ true }}", max_iterations=51)],
        )
    assert exc_info.value.errors == {"definition.nodes[0].max_iterations": ["Must be at most 50."]}


def test_a_failed_iteration_fails_the_loop(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            loop(
                "refine",
                {"type": "transform", "output": "{{ 10 // (2 - iteration) }}"},
                "{{ false }}",
            )
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    error = run.steps.get(node_id="refine").error
    assert (error["type"], error["iteration"]) == ("iteration_failed", 2)
    assert error["message"].startswith("Iteration 2 of loop 'refine' failed:")
    assert [row[1] for row in iterations(run)] == ["succeeded", "succeeded", "failed"]


def test_iterations_retry_with_the_loops_settings(cast, tool_server):
    http_tool(cast.project, cast.owner, "flaky", tool_server.route("/f", tool_server.failing(2)))
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            loop(
                "refine",
                {"type": "tool", "tool": "flaky", "args": {"n": "{{ iteration }}"}},
                "{{ output.body.n == 1 }}",
                retry=FAST_RETRY,
            )
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    first = run.steps.get(node_id="refine[0]")
    assert (first.attempt, first.failures) == (3, 2)
    assert run.steps.get(node_id="refine").output["body"] == {"n": 1}
    assert len(tool_server.calls("/f")) == 4


def test_a_workflow_body_runs_a_child_per_iteration(cast):
    make_workflow(
        cast.project,
        cast.owner,
        [transform("inc", "{{ input.n + 1 }}")],
        name="increment",
        output="{{ steps.inc.output }}",
    )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            loop(
                "refine",
                {
                    "type": "workflow",
                    "workflow": "increment",
                    "input": {"n": "{{ previous or 0 }}"},
                },
                "{{ output == 3 }}",
            )
        ],
        output="{{ steps.refine.output }}",
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    assert run.output == 3
    children = Run.objects.filter(parent_step__run=run).order_by("created_at")
    assert [c.input for c in children] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [row[3] for row in iterations(run)] == [1, 2, 3]


def test_cancel_stops_the_iteration_in_flight(cast, tool_server):
    release = threading.Event()
    http_tool(
        cast.project, cast.owner, "slow", tool_server.route("/s", tool_server.slow(20, release))
    )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [loop("refine", {"type": "tool", "tool": "slow"}, "{{ false }}")],
    )
    run = start(wf, cast.owner)
    wait_until(lambda: len(tool_server.calls("/s")) == 1, what="the first iteration calling")
    services.run_cancel(run=run, actor=cast.owner)
    release.set()
    run = Run.objects.get(pk=run.pk)
    assert run.status == "cancelled"
    assert [row[1] for row in iterations(run)] == ["cancelled"]
    assert run.steps.get(node_id="refine").status == "cancelled"


def test_resume_from_failure_runs_the_loop_again(cast, tool_server):
    http_tool(
        cast.project, cast.owner, "once", tool_server.route("/o", tool_server.failing(1, 404))
    )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("seed", "{{ run.id }}"),
            loop(
                "refine",
                {"type": "tool", "tool": "once", "args": {"n": "{{ iteration }}"}},
                "{{ output.body.n == 1 }}",
                "seed",
            ),
        ],
        output="{{ steps.refine.output.body }}",
    )
    failed = wait_for_run(start(wf, cast.owner).pk)
    assert failed.status == "failed"
    assert failed.steps.get(node_id="refine").error["iteration"] == 0
    retried = wait_for_run(services.run_retry(run=failed, actor=cast.owner, from_failure=True).pk)
    assert retried.status == "succeeded", retried.error
    assert retried.output == {"n": 1}
    assert retried.steps.get(node_id="seed").reused_from.run_id == failed.pk
    assert [row[1] for row in iterations(retried)] == ["succeeded", "succeeded"]
    assert len(tool_server.calls("/o")) == 3


def test_resume_from_failure_goes_on_from_the_failed_iteration(cast, tool_server):
    """Iterations 0 and 1 succeed, 2 fails: the resume reuses 0 and 1 (their outputs, the
    previous of 2) and runs 2 again, not the whole loop."""
    failed_once = {"n": 0}

    def third_fails_once(hit):
        if hit.body["n"] == 2 and not failed_once["n"]:
            failed_once["n"] += 1
            return 404, {"error": "not yet"}
        return 200, {"n": hit.body["n"], "saw": hit.body["previous"]}

    http_tool(cast.project, cast.owner, "step", tool_server.route("/s", third_fails_once))
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            loop(
                "refine",
                {
                    "type": "tool",
                    "tool": "step",
                    "args": {"n": "{{ iteration }}", "previous": "{{ previous }}"},
                },
                "{{ output.n == 2 }}",
                max_iterations=5,
            ),
        ],
        output="{{ steps.refine.output }}",
    )
    failed = wait_for_run(start(wf, cast.owner).pk)
    assert failed.status == "failed"
    assert failed.steps.get(node_id="refine").error.get("iteration") == 2, failed.steps.get(
        node_id="refine"
    ).error
    retried = wait_for_run(services.run_retry(run=failed, actor=cast.owner, from_failure=True).pk)
    assert retried.status == "succeeded", retried.error
    assert [row[1] for row in iterations(retried)] == ["succeeded"] * 3
    reused = retried.steps.filter(node_id__in=["refine[0]", "refine[1]"])
    assert {step.reused_from.run_id for step in reused} == {failed.pk}
    assert retried.steps.get(node_id="refine[2]").reused_from is None
    assert retried.steps.get(node_id="refine").input == {"iterations": 3}
    # iteration 2 saw iteration 1's output, reused from the failed run
    assert retried.output["n"] == 2 and retried.output["saw"]["n"] == 1
    assert [hit.body["n"] for hit in tool_server.calls("/s")] == [0, 1, 2, 2]
