"""Local steps (transforms and builtin tools) run inline, inside the planning transaction, instead
of taking a hop through the `steps` queue: one call of the planner can finish a whole chain.

Tests that need to see one planning call by itself call the services in this thread, inside the
test transaction (no `on_commit` fires there, so nothing reaches a worker); the others run on
the real Celery worker (`engine`) and observe which tasks it executed through Celery's own
`task_prerun` signal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals as celery_signals
from django.db import connection
from django.test.utils import CaptureQueriesContext

from policies.models import PolicyDecision
from policies.tests.factories import make_policy
from runs import services
from runs import signals as run_signals
from runs.models import Run, RunEvent, RunStep
from runs.services import dispatch
from runs.services.state import WORKER_NAME
from runs.tests.conftest import builtin_tool, events_of, tool_node
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run
from tools.executors import builtin as builtins

EMAIL = "jane.doe@example.com"
FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.01, "max_backoff_seconds": 0.01}


# --- helpers --------------------------------------------------------------------------------------


def start(cast: Any, workflow: Any, input: dict[str, Any] | None = None) -> Run:
    return services.run_create(workflow=workflow, input=input or {}, actor=cast.owner)


def plan_once(cast: Any, workflow: Any, input: dict[str, Any] | None = None) -> Run:
    """Create a run and make one `run_enqueue` call in this thread, as the worker's first task
    would; no worker takes part."""
    run = start(cast, workflow, input)
    services.run_enqueue(run_id=run.pk)
    return Run.objects.get(pk=run.pk)


def steps_of(run: Run) -> dict[str, RunStep]:
    return {step.node_id: step for step in RunStep.objects.filter(run=run)}


def statuses(run: Run) -> dict[str, str]:
    return dict(RunStep.objects.filter(run=run).values_list("node_id", "status"))


def trail(run: Run, node_id: str) -> list[tuple[str, str | None]]:
    """(type, step status) of the events of one node, in order."""
    return [(e.type, e.payload.get("status")) for e in events_of(run, node_id=node_id)]


def assert_gap_free(run: Run) -> None:
    seqs = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert Run.objects.get(pk=run.pk).event_seq == len(seqs)


def queued_events(run: Run, node_id: str | None = None) -> list[RunEvent]:
    return [e for e in events_of(run, "step.status", node_id) if e.payload["status"] == "queued"]


def calc_chain(cast: Any, length: int, name: str = "chain") -> Any:
    """calculator steps s0..s{n-1}, each adding 1 to the previous result: the last gives n."""
    nodes = [tool_node("s0", "calc", {"expression": "1"})]
    for i in range(1, length):
        expression = f"{{{{ steps.s{i - 1}.output.result }}}} + 1"
        nodes.append(tool_node(f"s{i}", "calc", {"expression": expression}, f"s{i - 1}"))
    return make_workflow(
        cast.project,
        cast.owner,
        nodes,
        name=name,
        output={"last": f"{{{{ steps.s{length - 1}.output.result }}}}"},
    )


@pytest.fixture
def tasks_seen() -> Iterator[list[tuple[str, list[Any]]]]:
    """(name, args) of every task the in-process worker starts during the test."""
    seen: list[tuple[str, list[Any]]] = []

    def receiver(task: Any = None, args: Any = None, **kwargs: Any) -> None:
        seen.append((task.name, list(args or [])))

    celery_signals.task_prerun.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        celery_signals.task_prerun.disconnect(receiver)


def tasks_of(seen: list[tuple[str, list[Any]]], run: Run) -> list[str]:
    """The names of the tasks that worked on `run`, in the order they started."""
    step_ids = set(RunStep.objects.filter(run=run).values_list("pk", flat=True))
    names = []
    for name, args in list(seen):
        ours = args and (
            args[0] in step_ids
            if name == "runs.step_execute"
            else name in ("runs.enqueue", "runs.advance", "runs.steps_execute")
            and args[0] == str(run.pk)
        )
        if ours:
            names.append(name)
    return names


@pytest.fixture
def inline_batches() -> Iterator[list[tuple[str, int]]]:
    """(run id, number of steps queued inline) of every `events_append` that wrote any: the
    planner writes the events of the steps it ran inline with its own, in one append per
    planning transaction."""
    batches: list[tuple[str, int]] = []

    def receiver(run_id: Any = None, events: Any = (), **kwargs: Any) -> None:
        count = sum(
            1
            for e in events
            if e.type == "step.status"
            and e.payload.get("status") == "queued"
            and e.payload.get("inline") is True
        )
        if count:
            batches.append((str(run_id), count))

    run_signals.events_appended.connect(receiver, weak=False)
    try:
        yield batches
    finally:
        run_signals.events_appended.disconnect(receiver)


# --- 1. a chain runs to the end in one planning call ----------------------------------------------


@pytest.mark.django_db
def test_a_local_chain_finishes_in_one_planning_call(cast):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    builtin_tool(cast.project, cast.owner, "pick", "json_path")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("t0", {"n": "{{ input.n + 1 }}"}),
            tool_node("c1", "calc", {"expression": "{{ steps.t0.output.n }} * 3"}, "t0"),
            transform(
                "t2",
                {"label": "n={{ steps.c1.output.result }}", "v": "{{ steps.c1.output.result }}"},
                "c1",
            ),
            tool_node("c3", "calc", {"expression": "{{ steps.t2.output.v }} + 0.5"}, "t2"),
            tool_node("j4", "pick", {"data": "{{ steps.t2.output }}", "path": "$.label"}, "c3"),
        ],
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        output={"result": "{{ steps.c3.output.result }}", "label": "{{ steps.j4.output.value }}"},
    )
    run = plan_once(cast, wf, {"n": 4})

    # One call, no worker: the whole run is done.
    assert run.status == "succeeded", run.error
    assert run.output == {"result": 15.5, "label": "n=15"}
    assert run.started_at <= run.finished_at

    steps = steps_of(run)
    assert {n: s.output for n, s in steps.items()} == {
        "t0": {"n": 5},
        "c1": {"result": 15},
        "t2": {"label": "n=15", "v": 15},
        "c3": {"result": 15.5},
        "j4": {"value": "n=15"},
    }
    # The rendered arguments of tool steps; a transform records its template.
    assert steps["c1"].input == {"expression": "5 * 3"}
    assert steps["c3"].input == {"expression": "15 + 0.5"}
    assert steps["j4"].input == {"data": {"label": "n=15", "v": 15}, "path": "$.label"}
    assert steps["t0"].input == {"n": "{{ input.n + 1 }}"}
    for step in steps.values():
        assert (step.status, step.attempt, step.failures) == ("succeeded", 1, 0), step.node_id
        assert step.error is None
        assert step.worker == WORKER_NAME
        assert step.queued_at is not None
        assert step.queued_at <= step.started_at <= step.finished_at
        assert step.next_attempt_at is None

    # Each step: queued (inline) → running → [tool.call] → succeeded, attempt 1 throughout.
    tool_steps = {"c1": "calc", "c3": "calc", "j4": "pick"}
    for node_id, step in steps.items():
        events = events_of(run, node_id=node_id)
        expected = [("step.status", "queued"), ("step.status", "running")]
        if node_id in tool_steps:
            expected.append(("tool.call", None))
        expected.append(("step.status", "succeeded"))
        assert [(e.type, e.payload.get("status")) for e in events] == expected, node_id
        assert [e.attempt for e in events] == [1] * len(expected)
        assert events[0].payload == {"status": "queued", "inline": True}
        assert events[1].payload == {"status": "running", "worker": step.worker}
        assert events[-1].payload["duration_ms"] >= 0
        if node_id in tool_steps:
            call = events[2].payload
            assert (call["tool"], call["ok"]) == (tool_steps[node_id], True)
            assert call["arguments"] == step.input

    # The whole log, in order, gap-free.
    log = [(e.type, e.node_id, e.payload.get("status")) for e in events_of(run)]
    assert log[:3] == [
        ("run.status", "", "pending"),
        ("run.status", "", "queued"),
        ("run.status", "", "running"),
    ]
    assert log[-1] == ("run.status", "", "succeeded")
    assert [n for _, n, s in log if s == "queued" and n] == ["t0", "c1", "t2", "c3", "j4"]
    assert_gap_free(run)


def test_a_local_chain_on_the_worker_takes_no_step_task(engine, cast, tasks_seen):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    run = wait_for_run(start(cast, calc_chain(cast, 5)).pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"last": 5}
    assert tasks_of(tasks_seen, run) == ["runs.enqueue"]
    assert all(e.payload.get("inline") is True for e in queued_events(run))
    assert_gap_free(run)


# --- 2. at most SPARKOPS_INLINE_STEPS per planning call -------------------------------------------


@pytest.mark.django_db
def test_the_inline_limit_defers_the_rest_to_the_next_planning(cast, settings):
    settings.SPARKOPS_INLINE_STEPS = 2
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    run = plan_once(cast, calc_chain(cast, 7))
    assert run.status == "running"
    assert statuses(run) == {
        "s0": "succeeded",
        "s1": "succeeded",
        **{f"s{i}": "pending" for i in range(2, 7)},
    }
    assert [e.node_id for e in queued_events(run)] == ["s0", "s1"]

    # The next planning (the `runs.advance` the first one sent) takes the next two.
    services.run_advance(run_id=run.pk)
    assert list(statuses(run).values()).count("succeeded") == 4
    assert statuses(run)["s4"] == "pending"
    assert Run.objects.get(pk=run.pk).status == "running"
    assert_gap_free(run)


def test_the_inline_limit_applies_to_the_worker(engine, cast, settings, tasks_seen, inline_batches):
    settings.SPARKOPS_INLINE_STEPS = 2
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    run = wait_for_run(start(cast, calc_chain(cast, 7)).pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"last": 7}
    steps = steps_of(run)
    assert all((s.status, s.attempt) == ("succeeded", 1) for s in steps.values())
    # Two steps per planning transaction on the worker, each planning sending the next; never
    # a step task.
    assert [count for run_id, count in inline_batches if run_id == str(run.pk)] == [2, 2, 2, 1]
    assert tasks_of(tasks_seen, run) == ["runs.enqueue"] + ["runs.advance"] * 3
    assert all(e.payload.get("inline") is True for e in queued_events(run))
    assert_gap_free(run)


# --- 3. SPARKOPS_INLINE_STEPS = 0 sends every step to the worker ----------------------------------


@pytest.mark.django_db
def test_inline_steps_off_queues_the_first_step(cast, settings):
    settings.SPARKOPS_INLINE_STEPS = 0
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    run = plan_once(cast, calc_chain(cast, 3))
    assert run.status == "running"
    assert statuses(run) == {"s0": "queued", "s1": "pending", "s2": "pending"}
    step = steps_of(run)["s0"]
    assert (step.attempt, step.worker, step.started_at) == (1, "", None)
    (queued,) = queued_events(run)
    assert queued.payload == {"status": "queued"}

    # The worker's path, in this thread: each success queues the next step.
    services.step_execute(step_id=step.pk, attempt=1)
    assert statuses(run) == {"s0": "succeeded", "s1": "queued", "s2": "pending"}


def test_inline_steps_off_runs_every_step_on_the_worker(engine, cast, settings, tasks_seen):
    settings.SPARKOPS_INLINE_STEPS = 0
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    wf = calc_chain(cast, 4)
    run = wait_for_run(start(cast, wf).pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"last": 4}
    # One message for the first step: the worker that ran each step took its successor itself
    # (eager dispatch), without a broker hop; every step was still queued first.
    assert tasks_of(tasks_seen, run) == ["runs.enqueue", "runs.step_execute"]
    assert [e.payload for e in queued_events(run)] == [{"status": "queued"}] * 4
    assert all(s.worker and s.attempt == 1 for s in steps_of(run).values())
    assert_gap_free(run)


@pytest.mark.parametrize(("eager_steps", "messages"), [(0, 4), (1, 2), (2, 2), (3, 1)])
def test_eager_dispatch_takes_at_most_its_budget_then_sends(
    engine, cast, settings, tasks_seen, eager_steps, messages
):
    """SPARKOPS_EAGER_STEPS caps the steps a worker task takes in a row; past it, the next
    step goes through the broker (to any worker) and that task starts its own budget."""
    settings.SPARKOPS_INLINE_STEPS = 0
    settings.SPARKOPS_EAGER_STEPS = eager_steps
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    run = wait_for_run(start(cast, calc_chain(cast, 4)).pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"last": 4}
    assert tasks_of(tasks_seen, run) == ["runs.enqueue"] + ["runs.step_execute"] * messages
    assert all(s.worker and s.attempt == 1 for s in steps_of(run).values())
    assert_gap_free(run)


# --- 4. non-retryable failures --------------------------------------------------------------------

FAILING = {
    "calculator": (
        lambda: tool_node("bad", "calc", {"expression": "2 +"}, "a", retry=FAST_RETRY),
        "tool_error",
    ),
    "transform": (
        lambda: transform("bad", "{{ input.missing.deeper }}", "a", retry=FAST_RETRY),
        "template_error",
    ),
}


@pytest.mark.parametrize("kind", sorted(FAILING))
def test_a_failed_inline_step_fails_the_run(engine, cast, tasks_seen, kind):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    make_node, error_type = FAILING[kind]
    wf = make_workflow(
        cast.project,
        cast.owner,
        [transform("a", 1), make_node(), transform("after", 2, "bad"), transform("side", 3, "a")],
    )
    run = wait_for_run(start(cast, wf).pk)
    assert run.status == "failed"
    assert run.error["step"] == "bad"
    assert run.error["step_error"]["type"] == error_type
    bad = steps_of(run)["bad"]
    assert (bad.status, bad.attempt, bad.failures) == ("failed", 1, 1)  # not retried
    assert bad.error["type"] == error_type and bad.error["retryable"] is False
    assert bad.worker == WORKER_NAME and bad.finished_at is not None
    assert statuses(run)["after"] == "cancelled"
    assert statuses(run)["a"] == "succeeded"
    expected = [("step.status", "queued"), ("step.status", "running")]
    if kind == "calculator":
        expected.append(("tool.call", None))
        assert "Not a valid arithmetic expression" in bad.error["message"]
    expected.append(("step.status", "failed"))
    assert trail(run, "bad") == expected
    assert tasks_of(tasks_seen, run) == ["runs.enqueue"]
    assert_gap_free(run)


@pytest.mark.parametrize("kind", sorted(FAILING))
def test_continue_on_failure_after_an_inline_failure(engine, cast, kind):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    make_node, error_type = FAILING[kind]
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", 1),
            {**make_node(), "continue_on_failure": True},
            transform("after", "{{ steps.bad.status }}:{{ steps.bad.error.type }}", "bad"),
        ],
        output={"after": "{{ steps.after.output }}"},
    )
    run = wait_for_run(start(cast, wf).pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"after": f"failed:{error_type}"}
    assert statuses(run) == {"a": "succeeded", "bad": "failed", "after": "succeeded"}
    assert_gap_free(run)


# --- 5. retryable failures go back to the worker path ---------------------------------------------

TIMEOUT_RETRY = {"max_attempts": 2, "backoff_seconds": 0.01, "max_backoff_seconds": 0.01}


def timeout_workflow(cast: Any) -> Any:
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    return make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", 1, timeout_seconds=60),  # its own timeout: it succeeds
            tool_node("slow", "calc", {"expression": "1+1"}, "a", retry=TIMEOUT_RETRY),
            transform("after", 2, "slow"),
        ],
    )


@pytest.mark.django_db
def test_a_retryable_inline_failure_is_requeued_for_the_worker(cast, settings):
    settings.SPARKOPS_STEP_TIMEOUT = 0  # every checkpoint is past the timeout
    run = plan_once(cast, timeout_workflow(cast))
    assert run.status == "running"
    step = steps_of(run)["slow"]
    assert (step.status, step.attempt, step.failures) == ("queued", 2, 1)
    assert step.error["type"] == "timeout" and step.error["retryable"] is True
    assert step.next_attempt_at is not None and step.output is None
    assert step.worker == WORKER_NAME and step.started_at is not None
    assert statuses(run) == {"a": "succeeded", "slow": "queued", "after": "pending"}
    events = events_of(run, "step.status", "slow")
    assert [(e.payload["status"], e.attempt) for e in events] == [
        ("queued", 1),
        ("running", 1),
        ("queued", 1),
    ]
    assert events[0].payload["inline"] is True
    retry = events[2].payload
    assert (retry["retry"], retry["failures"], retry["max_attempts"]) == (True, 1, 2)
    assert retry["error"]["type"] == "timeout"
    assert 0 < retry["delay_seconds"] <= 0.01
    assert not events_of(run, "tool.call")  # stopped at the first checkpoint

    # The second attempt on the worker's path times out as well: no attempts left.
    services.step_execute(step_id=step.pk, attempt=2)
    run.refresh_from_db()
    assert run.status == "failed"
    step.refresh_from_db()
    assert (step.status, step.attempt, step.failures) == ("failed", 2, 2)
    assert step.error["type"] == "timeout"
    assert statuses(run)["after"] == "cancelled"
    assert_gap_free(run)


def test_a_retryable_inline_failure_on_the_worker(engine, cast, settings, tasks_seen):
    settings.SPARKOPS_STEP_TIMEOUT = 0
    run = wait_for_run(start(cast, timeout_workflow(cast)).pk)
    assert run.status == "failed"
    assert run.error["step_error"]["type"] == "timeout"
    step = steps_of(run)["slow"]
    assert (step.status, step.attempt, step.failures) == ("failed", 2, 2)
    assert [(e.payload["status"], e.attempt) for e in events_of(run, "step.status", "slow")] == [
        ("queued", 1),
        ("running", 1),
        ("queued", 1),
        ("running", 2),
        ("failed", 2),
    ]
    # The first attempt inline, the retry through the steps queue.
    assert tasks_of(tasks_seen, run) == ["runs.enqueue", "runs.step_execute"]
    assert statuses(run)["after"] == "cancelled"
    assert_gap_free(run)


# --- 6. policies ----------------------------------------------------------------------------------


def test_a_denied_builtin_tool_fails_inline_and_keeps_the_decision(engine, cast, tasks_seen):
    builtin_tool(cast.project, cast.owner, "calculator", "calculator")
    policy = make_policy(cast.project, cast.owner, "tool_denylist", {"tools": ["calc*"]})
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", 1),
            tool_node("act", "calculator", {"expression": "1+1"}, "a"),
            transform("after", 2, "act"),
        ],
    )
    run = wait_for_run(start(cast, wf).pk)
    assert run.status == "failed"
    act = steps_of(run)["act"]
    assert (act.status, act.attempt) == ("failed", 1)
    assert act.error["type"] == "policy_denied" and act.error["retryable"] is False
    assert act.error["policy"]["id"] == policy.pk
    assert statuses(run)["after"] == "cancelled"
    (decision,) = PolicyDecision.objects.filter(run=run)
    assert (decision.policy_id, decision.node_id, decision.attempt) == (policy.pk, "act", 1)
    assert (decision.mode, decision.outcome, decision.point) == ("enforce", "deny", "tool_call")
    # The decision's event sits between the step's running and failed events.
    assert trail(run, "act") == [
        ("step.status", "queued"),
        ("step.status", "running"),
        ("policy.decision", None),
        ("step.status", "failed"),
    ]
    assert events_of(run, "policy.decision")[0].payload["policy"] == policy.pk
    assert not events_of(run, "tool.call")  # never called
    assert tasks_of(tasks_seen, run) == ["runs.enqueue"]
    assert_gap_free(run)


def test_pii_in_a_builtin_tool_output_is_redacted_inline(engine, cast):
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["tool_output"]})
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("act", "noop", {"to": "{{ input.email }}"}),
            transform("after", "{{ steps.act.output.to }}", "act"),
        ],
        output={"to": "{{ steps.after.output }}"},
    )
    run = wait_for_run(start(cast, wf, {"email": EMAIL}).pk)
    assert run.status == "succeeded", run.error
    steps = steps_of(run)
    assert steps["act"].output == {"to": "[REDACTED_EMAIL]"}
    assert steps["after"].output == "[REDACTED_EMAIL]"  # downstream never sees it
    assert run.output == {"to": "[REDACTED_EMAIL]"}
    (call,) = events_of(run, "tool.call")
    assert call.payload["output_preview"] == '{"to": "[REDACTED_EMAIL]"}'
    (decision,) = PolicyDecision.objects.filter(run=run)
    assert (decision.outcome, decision.point, decision.node_id) == ("redact", "tool_call", "act")
    assert trail(run, "act") == [
        ("step.status", "queued"),
        ("step.status", "running"),
        ("policy.decision", None),
        ("tool.call", None),
        ("step.status", "succeeded"),
    ]
    assert queued_events(run, "act")[0].payload["inline"] is True
    assert_gap_free(run)


def approval_policy_workflow(cast: Any) -> Any:
    builtin_tool(cast.project, cast.owner, "calculator", "calculator")
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["calculator"]})
    return make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", 20),
            tool_node("act", "calculator", {"expression": "{{ steps.a.output }} + 1"}, "a"),
            transform("after", "{{ steps.act.output.result * 2 }}", "act"),
        ],
        output={"after": "{{ steps.after.output }}"},
    )


def approve(cast: Any, run: Run, node_id: str) -> dict[str, Any]:
    response = cast.client("developer").post(
        f"/api/v1/runs/{run.pk}/steps/{node_id}/approve", {}, format="json"
    )
    assert response.status_code == 200, response.json()
    return response.json()


@pytest.mark.django_db
def test_a_tool_needing_approval_waits_and_the_approval_only_queues_it(cast):
    run = plan_once(cast, approval_policy_workflow(cast))
    assert run.status == "waiting_approval"
    assert statuses(run) == {"a": "succeeded", "act": "waiting_approval", "after": "pending"}
    act = steps_of(run)["act"]
    assert act.attempt == 0 and act.input["policy"] is True  # not run inline
    assert not events_of(run, "tool.call")

    approved = approve(cast, run, "act")
    # The request queued the step for a worker; it ran nothing itself.
    assert approved["status"] == "queued"
    act.refresh_from_db()
    assert (act.status, act.attempt, act.output) == ("queued", 1, None)
    assert statuses(run)["after"] == "pending"
    assert not events_of(run, "tool.call")

    services.step_execute(step_id=act.pk, attempt=1)  # the worker's path, in this thread
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.output == {"after": 42}
    assert_gap_free(run)


@pytest.mark.django_db
def test_approving_an_approval_node_queues_the_local_steps_after_it(cast):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            {"id": "review", "type": "approval", "message": "Go?"},
            transform("publish", 5, "review"),
            tool_node("calc", "calc", {"expression": "{{ steps.publish.output }} * 2"}, "publish"),
        ],
        output={"value": "{{ steps.calc.output.result }}"},
    )
    run = plan_once(cast, wf)
    assert run.status == "waiting_approval"
    approve(cast, run, "review")
    # The web request planned the run without running the ready transform inline.
    assert statuses(run) == {"review": "succeeded", "publish": "queued", "calc": "pending"}
    publish = steps_of(run)["publish"]
    assert (publish.attempt, publish.worker, publish.output) == (1, "", None)
    assert queued_events(run, "publish")[0].payload == {"status": "queued"}

    # The worker runs it; its success plans the run again, inline from there on.
    services.step_execute(step_id=publish.pk, attempt=1)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.output == {"value": 10}
    assert queued_events(run, "calc")[0].payload["inline"] is True
    assert_gap_free(run)


def test_a_tool_needing_approval_runs_on_the_worker_once_approved(engine, cast, tasks_seen):
    run = start(cast, approval_policy_workflow(cast))
    run = wait_for_run(run.pk, ("waiting_approval",))
    assert statuses(run)["act"] == "waiting_approval"
    approve(cast, run, "act")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"after": 42}
    act = steps_of(run)["act"]
    assert (act.attempt, act.output) == (1, {"result": 21})
    assert act.decided_at is not None
    # `a` and `after` inline; the approved call through the steps queue.
    assert tasks_of(tasks_seen, run) == ["runs.enqueue", "runs.step_execute"]
    assert queued_events(run, "after")[0].payload["inline"] is True
    assert_gap_free(run)


# --- 7. an unexpected error in an inline step -----------------------------------------------------


def _raise_runtime_error(arguments: dict[str, Any], config: dict[str, Any]) -> Any:
    raise RuntimeError("kaboom")


def _raise_database_error(arguments: dict[str, Any], config: dict[str, Any]) -> Any:
    # A real database error; on PostgreSQL it aborts the transaction until rolled back.
    with connection.cursor() as cursor:
        cursor.execute("SELECT no_such_column FROM runs_runstep")
    return {}


CRASHES = {
    "exception": (_raise_runtime_error, "RuntimeError: kaboom"),
    "database_error": (_raise_database_error, "no_such_column"),
}


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_an_unexpected_error_fails_only_the_inline_step(engine, cast, monkeypatch, crash):
    function, message = CRASHES[crash]
    # A real builtin in the registry (tool creation validates the name against it).
    monkeypatch.setitem(
        builtins.BUILTINS,
        "explode",
        builtins.Builtin(
            name="explode",
            description="Fails in a way no builtin should.",
            parameters={"type": "object", "properties": {}},
            function=function,
        ),
    )
    builtin_tool(cast.project, cast.owner, "explode", "explode")
    # Redacting the arguments writes a decision (a row and an event) inside the step.
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["tool_arguments"]})
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", {"to": "{{ input.email }}"}),
            tool_node("boom", "explode", {"to": "{{ steps.a.output.to }}"}, "a"),
            transform("after", 1, "boom"),
        ],
    )
    run = wait_for_run(start(cast, wf, {"email": EMAIL}).pk)
    assert run.status == "failed"
    assert run.error["step"] == "boom"
    boom = steps_of(run)["boom"]
    assert (boom.status, boom.attempt, boom.failures) == ("failed", 1, 1)
    assert boom.error["type"] == "internal_error" and boom.error["retryable"] is False
    assert message in boom.error["message"]
    assert boom.output is None
    assert statuses(run) == {"a": "succeeded", "boom": "failed", "after": "cancelled"}
    # Nothing the step wrote before it crashed is left: no decision, no decision event.
    assert not PolicyDecision.objects.filter(run=run).exists()
    assert not events_of(run, "policy.decision")
    assert not events_of(run, "tool.call")
    assert trail(run, "boom") == [
        ("step.status", "queued"),
        ("step.status", "running"),
        ("step.status", "failed"),
    ]
    assert_gap_free(run)


# --- 8. queries per inline step are constant ------------------------------------------------------


@pytest.mark.django_db
def test_queries_per_inline_step_are_constant(cast):
    builtin_tool(cast.project, cast.owner, "noop", "noop")

    def chain(length: int) -> Any:
        nodes = [tool_node("n0", "noop", {"i": 0})]
        for i in range(1, length):
            args = {"i": f"{{{{ steps.n{i - 1}.output.i + 1 }}}}"}
            nodes.append(tool_node(f"n{i}", "noop", args, f"n{i - 1}"))
        return make_workflow(
            cast.project,
            cast.owner,
            nodes,
            name=f"chain-{length}",
            output={"last": f"{{{{ steps.n{length - 1}.output.i }}}}"},
        )

    runs = {length: start(cast, chain(length)) for length in (10, 20, 30)}
    queries = {}
    for length, run in runs.items():
        with CaptureQueriesContext(connection) as captured:
            services.run_enqueue(run_id=run.pk)
        run.refresh_from_db()
        assert run.status == "succeeded", run.error
        assert run.output == {"last": length - 1}
        queries[length] = len(captured)
    per_step = (queries[30] - queries[10]) / 20
    assert queries[30] - queries[20] == queries[20] - queries[10], (queries, per_step)
    assert per_step <= 8, f"{per_step} queries per inline step ({queries})"


# --- the rest of what a worker's attempt does applies inline too ----------------------------------


@pytest.mark.django_db
def test_the_output_size_cap_applies_inline(cast, settings):
    settings.SPARKOPS_MAX_OUTPUT_BYTES = 100
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [tool_node("big", "noop", {"text": "x" * 200}), transform("after", 1, "big")],
    )
    run = plan_once(cast, wf)
    assert run.status == "failed"
    big = steps_of(run)["big"]
    assert (big.status, big.attempt, big.output) == ("failed", 1, None)
    assert big.error["type"] == "output_too_large"
    assert "SPARKOPS_MAX_OUTPUT_BYTES" in big.error["message"]
    assert statuses(run)["after"] == "cancelled"
    assert trail(run, "big") == [
        ("step.status", "queued"),
        ("step.status", "running"),
        ("tool.call", None),
        ("step.status", "failed"),
    ]
    assert_gap_free(run)


@pytest.mark.django_db
def test_secrets_are_redacted_from_what_an_inline_step_records(cast):
    from projects import services as project_services

    token = "tok-inline-5be1-very-secret"
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="api_token", value=token
    )
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            tool_node("call", "noop", {"auth": "Bearer {{ secrets.api_token }}"}),
            transform("then", "{{ steps.call.output.auth }}", "call"),
        ],
    )
    run = plan_once(cast, wf)
    assert run.status == "succeeded", run.error
    steps = steps_of(run)
    assert steps["call"].input == {"auth": "Bearer ***"}
    assert steps["call"].output == {"auth": "Bearer ***"}
    assert steps["then"].output == "Bearer ***"
    recorded = json.dumps(
        [
            list(RunStep.objects.filter(run=run).values("input", "output", "error")),
            list(RunEvent.objects.filter(run=run).values_list("payload", flat=True)),
            Run.objects.filter(pk=run.pk).values("output", "error").get(),
        ],
        default=str,
    )
    assert token not in recorded


@pytest.mark.django_db
def test_a_run_the_sweeper_sends_runs_local_steps_inline(
    cast, settings, django_capture_on_commit_callbacks
):
    settings.SPARKOPS_QUEUED_GRACE = 0
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    run = start(cast, calc_chain(cast, 3))  # its first task never sent (test transaction)
    with django_capture_on_commit_callbacks() as sent:  # the sweeper sends, it does not plan
        counts = services.sweep()
    assert counts["enqueued"] == 1
    assert len(sent) == 1
    services.run_enqueue(run_id=run.pk)  # what the message does on a worker
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.output == {"last": 3}
    assert all(e.payload.get("inline") is True for e in queued_events(run))


def test_eager_dispatch_takes_no_step_after_its_seconds(settings):
    """SPARKOPS_EAGER_SECONDS: a worker task that has run that long takes no more steps for
    itself (the planner sends them); one slot at a time, open again once taken."""
    settings.SPARKOPS_EAGER_STEPS = 100
    settings.SPARKOPS_EAGER_SECONDS = 60
    taking = dispatch.Taking()
    assert taking.reserve()
    assert not taking.reserve()  # one step at a time
    taking.hand("step")
    taking.confirm()  # its transaction committed
    assert taking.next() == ("step", None, True)
    assert taking.taken == 1
    assert taking.reserve()
    assert taking.next() is None  # reserved but never handed (the planning sent its steps)
    assert taking.reserve()
    taking.hand("other")  # its transaction did not confirm a commit
    assert taking.next() == ("other", None, False)
    taking.started -= 61
    assert not taking.reserve()


def test_a_message_of_several_steps_on_a_threads_worker_runs_one_and_sends_the_others(
    engine, cast, settings, tasks_seen
):
    """SPARKOPS_STEPS_PER_MESSAGE is for the gevent steps worker, which runs a message's steps
    at once; a threads worker (the embedded default's, this test's) would run them one after
    another, so it runs the first and sends the others on, one message each."""
    settings.SPARKOPS_INLINE_STEPS = 0
    settings.SPARKOPS_STEPS_PER_MESSAGE = 10
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    nodes = [tool_node(f"n{i}", "calc", {"expression": f"{i} + 1"}) for i in range(12)]
    run = wait_for_run(start(cast, make_workflow(cast.project, cast.owner, nodes)).pk)
    assert run.status == "succeeded", run.error
    assert run.output == {f"n{i}": {"result": i + 1} for i in range(12)}
    names = tasks_of(tasks_seen, run)
    # Two messages (10 + 2 steps); of each, the first step runs, the others go on alone.
    assert names.count("runs.steps_execute") == 2
    assert names.count("runs.step_execute") == 10
    assert all(s.worker and s.attempt == 1 for s in steps_of(run).values())
    assert_gap_free(run)
