"""A fan-out sent several steps a message (runs/services/dispatch.py, `send_steps`): on the
steps worker as `make run` starts it (`python -m sparkops.worker`, gevent), a message of
SPARKOPS_STEPS_PER_MESSAGE steps starts them in one statement and runs them at once, each as
its own attempt. Real processes: a private Redis, an orchestration worker (threads) and the
steps worker (gevent), against the test database."""

from __future__ import annotations

import collections
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from runs import services
from runs.models import Run, RunEvent, RunStep
from runs.tests.conftest import ToolServer, builtin_tool, http_tool, tool_node
from runs.tests.factories import make_workflow
from sparkops.testing.engine import wait_for_run, wait_until
from sparkops.testing.processes import CountingServer, RedisServer, WorkerProcess, broker

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE_ENV = {"SPARKOPS_INLINE_STEPS": "0", "SPARKOPS_STEPS_PER_MESSAGE": "10"}


@pytest.fixture
def gevent_workers(db: Any, settings: Any) -> Iterator[None]:
    """The orchestration worker (it plans the fan-out and sends it) and one gevent steps
    process, both sending ten steps a message and running every step on the steps queue."""
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    server = RedisServer()
    server.start()
    orchestration = WorkerProcess(
        server.url, queues="orchestration", concurrency=4, extra_env=ENGINE_ENV
    )
    steps = WorkerProcess(
        server.url,
        steps=True,
        extra_env={**ENGINE_ENV, "WORKER_POOL": "gevent", "STEPS_PROCESSES": "1"},
    )
    try:
        with broker(server.url):
            orchestration.start()
            steps.start()
            yield
    finally:
        steps.kill()
        orchestration.kill()
        server.close()


def assert_events_whole(run: Run, steps: int) -> None:
    """Gap-free numbering, and each step queued, running and succeeded exactly once."""
    events = list(RunEvent.objects.filter(run=run).order_by("seq"))
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    statuses = Counter(
        (event.node_id, event.payload.get("status"))
        for event in events
        if event.type == RunEvent.Type.STEP_STATUS
    )
    for step in RunStep.objects.filter(run=run):
        for status in ("queued", "running", "succeeded"):
            assert statuses[(step.node_id, status)] == 1, (step.node_id, status)


def test_a_fan_out_starts_ten_steps_a_message_in_one_statement(cast, gevent_workers):
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    nodes = [tool_node(f"n{i}", "calc", {"expression": f"{i} * 2"}) for i in range(25)]
    workflow = make_workflow(cast.project, cast.owner, nodes)
    run = wait_for_run(
        services.run_create(workflow=workflow, input={}, actor=cast.owner).pk, timeout=120
    )
    assert run.status == "succeeded", run.error
    assert run.output == {f"n{i}": {"result": i * 2} for i in range(25)}
    steps = list(RunStep.objects.filter(run=run))
    assert {step.attempt for step in steps} == {1}
    # One start statement a message: its steps share their start time (3 messages: 10, 10, 5).
    assert sorted(Counter(step.started_at for step in steps).values()) == [5, 10, 10]
    assert_events_whole(run, 25)


def test_the_steps_of_one_message_call_out_at_once(cast, gevent_workers, tool_server: ToolServer):
    """Ten HTTP steps in one message: the server holds each request until all ten are in, so
    the steps only succeed if the worker runs them together, not one after another."""
    url = tool_server.route("/together", tool_server.gather(10, timeout=20))
    http_tool(cast.project, cast.owner, "together", url)
    nodes = [tool_node(f"h{i}", "together", {"i": i}) for i in range(10)]
    workflow = make_workflow(cast.project, cast.owner, nodes)
    run = wait_for_run(
        services.run_create(workflow=workflow, input={}, actor=cast.owner).pk, timeout=120
    )
    assert run.status == "succeeded", run.error
    outputs = RunStep.objects.filter(run=run).values_list("output", flat=True)
    assert all(output["together"] is True for output in outputs), list(outputs)
    assert tool_server.max_in_flight["/together"] == 10
    steps = list(RunStep.objects.filter(run=run))
    assert len({step.started_at for step in steps}) == 1  # one message, one start statement
    assert_events_whole(run, 10)


def test_a_steps_worker_killed_mid_message_loses_nothing(cast, settings):
    """A gevent steps worker is killed with SIGKILL while the ten steps of one message all wait
    on their HTTP calls: the sweeper re-queues the silent steps as new attempts (one message
    each), a second steps worker finishes the run, every step succeeds once, gap-free."""
    settings.SPARKOPS_HEARTBEAT_SECONDS = 0.5
    settings.SPARKOPS_HEARTBEAT_TIMEOUT = 3.0
    settings.SPARKOPS_QUEUED_GRACE = 2.0
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    server = RedisServer()
    server.start()
    steps_env = {**ENGINE_ENV, "WORKER_POOL": "gevent", "STEPS_PROCESSES": "1"}
    orchestration = WorkerProcess(
        server.url, queues="orchestration", concurrency=4, extra_env=ENGINE_ENV
    )
    first = WorkerProcess(server.url, steps=True, extra_env=steps_env)
    second = WorkerProcess(server.url, steps=True, extra_env=steps_env)
    try:
        with broker(server.url), CountingServer() as endpoint:
            endpoint.held = lambda body: True
            endpoint.gate.clear()
            http_tool(cast.project, cast.owner, "record", f"{endpoint.url}/record")
            nodes = [tool_node(f"h{i}", "record", {"i": i}) for i in range(10)]
            workflow = make_workflow(cast.project, cast.owner, nodes)
            orchestration.start()
            first.start()
            run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
            wait_until(
                lambda: len(endpoint.requests) >= 10, timeout=60, what="every call in flight"
            )
            first.kill()
            endpoint.gate.set()  # the killed worker's calls are answered to nobody
            second.start()

            def finished() -> bool:
                services.sweep()
                return Run.objects.get(pk=run.pk).is_finished

            wait_until(finished, timeout=120, interval=0.5, what="the run to finish")
            calls = len(endpoint.requests)
    finally:
        first.kill()
        second.stop()
        orchestration.stop()
        server.close()
    run.refresh_from_db()
    assert run.status == "succeeded", (run.error, second.output())
    assert set(RunStep.objects.filter(run=run).values_list("attempt", flat=True)) == {2}
    assert RunEvent.objects.filter(run=run, payload__recovered=True).count() == 10
    seqs = list(run.events.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    succeeded = collections.Counter(
        run.events.filter(type="step.status", payload__status="succeeded").values_list(
            "node_id", flat=True
        )
    )
    assert succeeded == {f"h{i}": 1 for i in range(10)}
    assert calls == 20  # each call made by the killed attempt, and again by the second
