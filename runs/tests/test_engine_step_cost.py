"""What one queued step costs the database (the path of every HTTP tool and model call), and
that numbering its events stays gap-free and in commit order while many steps of one run write
at once: a client resuming by `Last-Event-ID` never skips or repeats an event."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from runs import services
from runs.models import Run, RunEvent, RunStep
from runs.tests.conftest import builtin_tool, sends_lost, tool_node
from runs.tests.factories import make_workflow, model_workflow
from sparkops.testing.engine import wait_for_run

# Every step of a chain after the first: start (one statement), the tool and the project's
# policies read, then the result: lock the run, the guarded write, the planning read, the next
# step queued, and the events numbered and written (one statement).
QUERIES_PER_QUEUED_STEP = 8


def chain(cast: Any, length: int) -> Any:
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    nodes = [
        tool_node(f"n{i}", "noop", {"i": i}, *([f"n{i - 1}"] if i else [])) for i in range(length)
    ]
    return make_workflow(cast.project, cast.owner, nodes, name=f"chain-{length}")


@pytest.mark.django_db(transaction=True)
def test_one_queued_step_costs_eight_queries(cast: Any, settings: Any) -> None:
    settings.SPARKOPS_INLINE_STEPS = 0  # every step queued, as an HTTP tool or a model call is
    # Nothing reaches a worker (another test's may be running) before the measured step.
    with sends_lost():
        run = services.run_create(workflow=chain(cast, 3), input={}, actor=cast.owner)
        services.run_enqueue(run_id=run.pk)
        first = RunStep.objects.get(run=run, node_id="n0")
        services.step_execute(step_id=first.pk, attempt=first.attempt)
    step = RunStep.objects.get(run=run, node_id="n1")
    assert step.status == RunStep.Status.QUEUED

    with CaptureQueriesContext(connection) as captured:
        services.step_execute(step_id=step.pk, attempt=step.attempt)

    statements = [query["sql"] for query in captured.captured_queries]
    assert len(statements) == QUERIES_PER_QUEUED_STEP, "\n".join(s[:160] for s in statements)
    assert RunStep.objects.get(pk=step.pk).status == RunStep.Status.SUCCEEDED
    # n2 was queued and sent (a running worker may have taken it since).
    assert RunStep.objects.get(run=run, node_id="n2").attempt == 1
    trail = [
        (event.node_id, event.payload.get("status"))
        for event in RunEvent.objects.filter(run=run, type="step.status", node_id="n1")
    ]
    assert trail == [("n1", "queued"), ("n1", "running"), ("n1", "succeeded")]


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_or_stale_delivery_starts_nothing(cast: Any, settings: Any) -> None:
    settings.SPARKOPS_INLINE_STEPS = 0
    with sends_lost():
        run = services.run_create(workflow=chain(cast, 2), input={}, actor=cast.owner)
        services.run_enqueue(run_id=run.pk)
    step = RunStep.objects.get(run=run, node_id="n0")
    seq = Run.objects.get(pk=run.pk).event_seq
    services.step_execute(step_id=step.pk, attempt=step.attempt + 1)  # not its attempt
    assert RunStep.objects.get(pk=step.pk).status == RunStep.Status.QUEUED
    Run.objects.filter(pk=run.pk).update(cancel_requested=True)
    services.step_execute(step_id=step.pk, attempt=step.attempt)  # its run is being cancelled
    assert RunStep.objects.get(pk=step.pk).status == RunStep.Status.QUEUED
    assert Run.objects.get(pk=run.pk).event_seq == seq
    assert RunEvent.objects.filter(run=run).count() == seq


def read_from(cast: Any, run: Run, last: int) -> tuple[list[int], bool]:
    """One stream connection from `last` on, read to its end: the ids it sent, and whether it
    ended with `end` (the run over, every event sent)."""
    response = cast.client("viewer").get(
        f"/api/v1/runs/{run.pk}/stream", HTTP_LAST_EVENT_ID=str(last)
    )
    text = b"".join(response.streaming_content).decode()
    return [int(found) for found in re.findall(r"^id: (\d+)$", text, re.M)], "event: end" in text


def test_resuming_by_last_event_id_skips_and_repeats_nothing_while_a_fan_out_writes(
    cast: Any, engine: Any, settings: Any
) -> None:
    settings.SPARKOPS_INLINE_STEPS = 0
    settings.SPARKOPS_STREAM_MAX_SECONDS = 0.05  # many short connections, each resuming
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.01
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    width = 60
    nodes = [tool_node(f"n{i}", "noop", {"i": i}) for i in range(width)]
    nodes.append(tool_node("join", "noop", {}, *[f"n{i}" for i in range(width)]))
    workflow = make_workflow(cast.project, cast.owner, nodes, name="fan")
    run = services.run_create(workflow=workflow, input={}, actor=cast.owner)

    received: list[int] = []
    connections = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ids, ended = read_from(cast, run, received[-1] if received else 0)
        received += ids
        connections += 1
        if ended:
            break
    else:
        raise AssertionError(f"the stream did not end; received {len(received)} events")

    run = wait_for_run(run.pk)
    assert run.status == Run.Status.SUCCEEDED, run.error
    # Steps of the fan-out ran on the worker's threads at the same time, each numbering events.
    spans = [
        (step.started_at, step.finished_at)
        for step in RunStep.objects.filter(run=run)
        if step.started_at is not None and step.finished_at is not None
    ]
    assert len(spans) == width + 1
    assert any(
        a_start < b_end and b_start < a_end
        for i, (a_start, a_end) in enumerate(spans)
        for b_start, b_end in spans[i + 1 :]
    ), "no two steps overlapped"
    assert received == list(range(1, run.event_seq + 1)), (connections, received)
    assert connections > 1
    assert list(RunEvent.objects.filter(run=run).values_list("seq", flat=True)) == received


# One model call of a one-step run, from its start to the run's end: the start; the agent, its
# tools and the project; the prompt's and the call's checks on ONE read of the policies, a
# budget read; the input recorded; the call charged (price, agent, budgets, usage, events);
# the reply's content rules (policies read afresh after the wait); the result, the run's
# finish and what listens for it (webhooks in a savepoint; event triggers and a queued schedule
# fire read first, a savepoint only for work).
QUERIES_PER_AGENT_RUN_STEP = 35  # at most; BEGIN, COMMIT and savepoints included


@pytest.mark.django_db(transaction=True)
def test_a_model_call_step_reads_the_policies_twice_and_nothing_twice(
    cast: Any, settings: Any, fake_llm: Any
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    workflow = model_workflow(cast, fake_llm.openai_base_url)
    with sends_lost():
        run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
        services.run_enqueue(run_id=run.pk)
    step = RunStep.objects.get(run=run, node_id="answer")

    with CaptureQueriesContext(connection) as captured:
        services.step_execute(step_id=step.pk, attempt=step.attempt)

    assert Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED
    statements = [query["sql"] for query in captured.captured_queries]
    listing = "\n".join(s[:160] for s in statements)
    policies = [s for s in statements if 'FROM "policies_policy"' in s]
    assert len(policies) == 2, listing  # before the call (prompt and call), after it (reply)
    # The pinned version is read once per process, not per call; a run with no sub-workflow
    # node looks for no child runs.
    assert not [s for s in statements if 'FROM "workflows_workflowversion"' in s], listing
    assert not [s for s in statements if 'ON ("runs_run"."parent_step_id"' in s], listing
    # At most: a lookup another test made in this process may be cached already.
    assert len(statements) <= QUERIES_PER_AGENT_RUN_STEP, listing
