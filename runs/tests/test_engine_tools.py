"""Tool steps on a real Celery worker against a local HTTP endpoint: rendering, idempotency
keys, parallel branches, retries, timeouts, deadlines, cancel, built-ins and secrets."""

from __future__ import annotations

import json
import threading

import pytest

from projects import services as project_services
from runs import services
from runs.models import Run, RunStep
from runs.tests.conftest import (
    builtin_tool,
    events_of,
    http_tool,
    status_of,
    task_done,
    tool_node,
    wait_task_done,
)
from runs.tests.factories import make_workflow
from sparkops.nul import nul_path
from sparkops.testing.engine import wait_for_run, wait_for_step, wait_until

pytestmark = pytest.mark.usefixtures("engine")

FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.05, "max_backoff_seconds": 0.1}


def start(workflow, actor, input=None):
    return services.run_create(workflow=workflow, input=input or {}, actor=actor)


def step_statuses(run, node_id):
    return [e.payload["status"] for e in events_of(run, "step.status", node_id)]


def test_args_are_rendered_from_input_and_step_outputs(cast, tool_server):
    http_tool(cast.project, cast.owner, "record", tool_server.url + "/record")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("first", "record", {"topic": "{{ input.topic }}", "n": "{{ input.n }}"}),
            tool_node(
                "second",
                "record",
                {
                    "previous": "{{ steps.first.output.body.topic }}",
                    "double": "{{ steps.first.output.body.n * 2 }}",
                    "label": "n={{ steps.first.output.body.n }}",
                },
                "first",
            ),
        ],
        input_schema={"type": "object", "properties": {"topic": {"type": "string"}}},
        output={"final": "{{ steps.second.output.body }}"},
    )
    run = wait_for_run(start(wf, cast.owner, {"topic": "otters", "n": 21}).pk)
    assert run.status == "succeeded", run.error
    first, second = (hit.body for hit in tool_server.calls("/record"))
    assert first == {"topic": "otters", "n": 21}
    # a whole `{{ expression }}` keeps its JSON type; a mixed string is a string
    assert second == {"previous": "otters", "double": 42, "label": "n=21"}
    assert run.output == {"final": second}
    step = run.steps.get(node_id="second")
    assert step.input == second
    assert step.output["body"] == second
    calls = events_of(run, "tool.call")
    assert [(e.node_id, e.payload["ok"], e.payload["http_status"]) for e in calls] == [
        ("first", True, 200),
        ("second", True, 200),
    ]


def test_each_call_carries_an_idempotency_key_stable_across_attempts(cast, tool_server):
    url = tool_server.route("/flaky", tool_server.failing(2))
    http_tool(cast.project, cast.owner, "flaky", url)
    wf = make_workflow(cast.project, cast.owner, [tool_node("call", "flaky", retry=FAST_RETRY)])
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    keys = [hit.headers["x-idempotency-key"] for hit in tool_server.calls("/flaky")]
    assert keys == [f"{run.pk}:call"] * 3


def test_diamond_branches_really_run_in_parallel(cast, tool_server):
    http_tool(cast.project, cast.owner, "source", tool_server.url + "/source")
    branch = tool_server.route("/branch", tool_server.gather(2, timeout=15))
    http_tool(cast.project, cast.owner, "branch", branch)
    http_tool(cast.project, cast.owner, "join", tool_server.url + "/join")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("a", "source", {"v": 1}),
            tool_node("b", "branch", {"side": "left", "v": "{{ steps.a.output.body.v }}"}, "a"),
            tool_node("c", "branch", {"side": "right", "v": "{{ steps.a.output.body.v }}"}, "a"),
            tool_node(
                "d",
                "join",
                {
                    "left": "{{ steps.b.output.together }}",
                    "right": "{{ steps.c.output.together }}",
                },
                "b",
                "c",
            ),
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk, timeout=30)
    assert run.status == "succeeded", run.error
    # The endpoint held each branch call until the other had arrived: both were in progress
    # at the same time.
    assert tool_server.max_in_flight["/branch"] == 2
    assert tool_server.calls("/join")[0].body == {"left": True, "right": True}
    steps = {s.node_id: s for s in run.steps.all()}
    assert steps["b"].started_at < steps["c"].finished_at
    assert steps["c"].started_at < steps["b"].finished_at
    assert steps["d"].started_at >= max(steps["b"].finished_at, steps["c"].finished_at)


def test_retry_then_success(cast, tool_server):
    url = tool_server.route("/flaky", tool_server.failing(2, status=503))
    http_tool(cast.project, cast.owner, "flaky", url)
    wf = make_workflow(cast.project, cast.owner, [tool_node("call", "flaky", retry=FAST_RETRY)])
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    step = run.steps.get(node_id="call")
    assert (step.status, step.attempt, step.failures) == ("succeeded", 3, 2)
    assert len(tool_server.calls("/flaky")) == 3
    retries = [e for e in events_of(run, "step.status", "call") if e.payload.get("retry") is True]
    assert [(e.attempt, e.payload["failures"]) for e in retries] == [(1, 1), (2, 2)]
    assert all(e.payload["error"]["http_status"] == 503 for e in retries)
    assert all(0 < e.payload["delay_seconds"] <= 0.1 for e in retries)
    assert step_statuses(run, "call") == [
        "queued",
        "running",
        "queued",
        "running",
        "queued",
        "running",
        "succeeded",
    ]


def test_retries_exhausted_fail_the_step_and_the_run(cast, tool_server):
    url = tool_server.route("/down", status_of(503))
    http_tool(cast.project, cast.owner, "down", url)
    wf = make_workflow(cast.project, cast.owner, [tool_node("call", "down", retry=FAST_RETRY)])
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    step = run.steps.get(node_id="call")
    assert (step.status, step.attempt, step.failures) == ("failed", 3, 3)
    assert step.error["type"] == "tool_error"
    assert step.error["http_status"] == 503
    assert len(tool_server.calls("/down")) == 3
    assert run.error["step"] == "call"
    assert "Step 'call' failed" in run.error["message"]
    assert "HTTP 503" in run.error["message"]


def test_a_404_is_not_retried(cast, tool_server):
    url = tool_server.route("/missing", status_of(404))
    http_tool(cast.project, cast.owner, "missing", url)
    wf = make_workflow(cast.project, cast.owner, [tool_node("call", "missing", retry=FAST_RETRY)])
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    step = run.steps.get(node_id="call")
    assert (step.attempt, step.failures) == (1, 1)
    assert step.error["retryable"] is False
    assert step.error["http_status"] == 404
    assert len(tool_server.calls("/missing")) == 1


def test_step_timeout(cast, tool_server):
    url = tool_server.route("/slow", tool_server.slow(3))
    http_tool(cast.project, cast.owner, "slow", url)
    wf = make_workflow(
        cast.project,
        cast.owner,
        [tool_node("call", "slow", timeout_seconds=1, retry={"max_attempts": 1})],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    step = run.steps.get(node_id="call")
    assert step.status == "failed"
    assert step.error["type"] == "timeout", step.error
    # the server holds the request 3 s; the 1 s timeout ended the attempt before that
    assert (step.finished_at - step.started_at).total_seconds() < 2.9
    assert run.error["step_error"]["type"] == "timeout"


def test_run_deadline_times_the_run_out(cast, tool_server):
    release = threading.Event()
    url = tool_server.route("/slow", tool_server.slow(20, release))
    http_tool(cast.project, cast.owner, "slow", url)
    wf = make_workflow(cast.project, cast.owner, [tool_node("call", "slow")], timeout_seconds=1)
    run = start(wf, cast.owner)
    step = wait_for_step(run.pk, "call", ("running",))

    def swept_out():
        services.sweep()
        return Run.objects.get(pk=run.pk).status == "timed_out"

    wait_until(swept_out, timeout=15, interval=0.1, what="the sweeper to time the run out")
    run = Run.objects.get(pk=run.pk)
    assert run.error["type"] == "timed_out"
    assert run.finished_at >= run.deadline
    release.set()
    wait_task_done(step.pk)
    step.refresh_from_db()
    assert step.status == "cancelled"
    assert step.output is None
    assert "succeeded" not in step_statuses(run, "call")
    assert Run.objects.get(pk=run.pk).status == "timed_out"


def test_cancel_while_running_discards_the_late_result(cast, tool_server):
    release = threading.Event()
    url = tool_server.route("/slow", tool_server.slow(20, release))
    http_tool(cast.project, cast.owner, "slow", url)
    wf = make_workflow(
        cast.project,
        cast.owner,
        [tool_node("call", "slow"), tool_node("after", "slow", {}, "call")],
    )
    run = start(wf, cast.owner)
    step = wait_for_step(run.pk, "call", ("running",))
    wait_until(lambda: tool_server.calls("/slow"), what="the call to reach the server")

    services.run_cancel(run=run, actor=cast.owner)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "cancelled"  # at once, not when the call returns
    assert dict(run.steps.values_list("node_id", "status")) == {
        "call": "cancelled",
        "after": "cancelled",
    }
    cancelled_at = events_of(run)[-1].seq

    assert not task_done(step.pk)  # the worker is still inside the call
    release.set()  # the call now answers 200...
    wait_task_done(step.pk)
    step.refresh_from_db()
    assert step.status == "cancelled"  # ...and its result is discarded
    assert step.output is None
    late = [e for e in events_of(run, "step.status") if e.seq > cancelled_at]
    assert late == []
    assert "succeeded" not in step_statuses(run, "call")
    assert len(tool_server.calls("/slow")) == 1  # `after` never ran
    assert Run.objects.get(pk=run.pk).status == "cancelled"


def test_builtin_tool_step(cast):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("sum", "calc", {"expression": "({{ input.a }} + {{ input.b }}) * 4"}),
            tool_node("half", "calc", {"expression": "{{ steps.sum.output.result }} / 2"}, "sum"),
        ],
        output={"value": "{{ steps.half.output.result }}"},
    )
    run = wait_for_run(start(wf, cast.owner, {"a": 2, "b": 3}).pk)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="sum").output == {"result": 20}
    assert run.output == {"value": 10.0}
    assert run.steps.get(node_id="sum").input == {"expression": "(2 + 3) * 4"}


def test_builtin_tool_error_fails_the_step(cast):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    wf = make_workflow(cast.project, cast.owner, [tool_node("div", "calc", {"expression": "1/0"})])
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    assert run.steps.get(node_id="div").error["message"] == "Division by zero."


def test_secrets_reach_the_server_but_are_never_recorded(cast, tool_server):
    token = "tok-3f9c1a77-very-secret"
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="api_token", value=token
    )

    def reveal(hit):
        # A careless endpoint that echoes the credentials it got.
        return 200, {"authorization": hit.headers.get("authorization"), "body": hit.body}

    url = tool_server.route("/reveal", reveal)
    http_tool(
        cast.project,
        cast.owner,
        "reveal",
        url,
        auth={"type": "bearer", "secret": "api_token"},
    )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("call", "reveal", {"note": "token={{ secrets.api_token }}"}),
            tool_node("then", "reveal", {"x": "{{ steps.call.output.authorization }}"}, "call"),
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    hit = tool_server.calls("/reveal")[0]
    assert hit.headers["authorization"] == f"Bearer {token}"
    assert hit.body == {"note": f"token={token}"}

    step = run.steps.get(node_id="call")
    assert step.input == {"note": "token=***"}
    assert step.output == {"authorization": "Bearer ***", "body": {"note": "token=***"}}
    recorded = json.dumps(
        [
            list(RunStep.objects.filter(run=run).values("input", "output", "error")),
            [e.payload for e in events_of(run)],
            Run.objects.filter(pk=run.pk).values("output", "error").get(),
        ],
        default=str,
    )
    assert token not in recorded
    assert "***" in recorded


def test_nul_characters_in_a_tool_response_are_stripped_before_the_write(cast, tool_server):
    # JSON allows "\u0000"; PostgreSQL's jsonb refuses it, which crashed the step write
    url = tool_server.route("/nul", lambda hit: (200, {"te\x00xt": "a\x00b", "list": ["\x00c"]}))
    http_tool(cast.project, cast.owner, "nul", url)
    wf = make_workflow(
        cast.project,
        cast.owner,
        [tool_node("n", "nul", {})],
        output={"echo": "{{ steps.n.output }}"},
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    output = RunStep.objects.get(run=run, node_id="n").output
    assert nul_path(output) is None and nul_path(run.output) is None, output
    assert output == {"text": "ab", "list": ["c"]}
    assert run.output == {"echo": {"text": "ab", "list": ["c"]}}
    calls = events_of(run, "tool.call", "n")
    assert calls and all(nul_path(event.payload) is None for event in calls)
