"""End-to-end durability: workers in their own processes, killed with SIGKILL mid-run; a broker
that goes down while runs are created. The database is the source of truth and the sweeper
(called here as beat would call it) recovers what the crash lost."""

from __future__ import annotations

import collections
import time

import pytest

from agents import services as agent_services
from runs import services
from runs.models import Run, RunEvent, RunStep
from runs.tests.factories import model_workflow
from sparkops.testing.engine import wait_until
from sparkops.testing.fake_llm import FakeLLMServer
from sparkops.testing.processes import CountingServer, RedisServer, WorkerProcess, broker
from tools import services as tool_services
from workflows import services as workflow_services

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 20


@pytest.fixture
def fast_recovery(settings):
    settings.SPARKOPS_HEARTBEAT_SECONDS = 0.5
    settings.SPARKOPS_HEARTBEAT_TIMEOUT = 3.0
    settings.SPARKOPS_QUEUED_GRACE = 2.0
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]


@pytest.fixture
def redis_broker():
    server = RedisServer()
    server.start()
    try:
        with broker(server.url):
            yield server
    finally:
        server.close()


def five_step_workflow(cast, url):
    tool_services.tool_create(
        actor=cast.owner,
        project=cast.project,
        name="record",
        kind="http",
        parameters={
            "type": "object",
            "properties": {"step": {"type": "string"}, "value": {}},
            "required": ["step"],
        },
        config={
            "method": "POST",
            "url": f"{url}/record",
            "body": {"step": "{{ args.step }}", "value": "{{ args.value }}"},
        },
    )
    agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Summarizer",
        slug="summarizer",
        provider="simulated",
        model="sim-1",
        settings={"mode": "fixed", "reply": "summary ready"},
    )

    def http(node_id, *deps):
        return {
            "id": node_id,
            "type": "tool",
            "tool": "record",
            "depends_on": list(deps),
            "args": {"step": node_id, "value": "{{ input.n }}"},
            "retry": {"max_attempts": 3, "backoff_seconds": 0.1},
        }

    definition = {
        "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "nodes": [
            http("fetch"),
            http("left", "fetch"),
            http("right", "fetch"),
            {
                "id": "summarize",
                "type": "agent",
                "agent": "summarizer",
                "prompt": "Summarize {{ steps.left.output }}",
                "depends_on": ["left", "right"],
            },
            http("publish", "summarize"),
        ],
        "output": {"text": "{{ steps.summarize.output.text }}"},
    }
    return workflow_services.workflow_create(
        actor=cast.owner, project=cast.project, name="durable", definition=definition
    )


def sweep_until(predicate, *, timeout, what):
    """The sweeper as beat runs it, every half second, until `predicate` holds."""

    def check():
        services.sweep()
        return predicate()

    return wait_until(check, timeout=timeout, interval=0.5, what=what)


def test_killed_worker_loses_nothing(cast, fast_recovery, redis_broker):
    with CountingServer(delay=0.3) as endpoint:
        # The middle steps wait at the endpoint until the first worker is dead: it dies with
        # steps in flight and runs part-way through, however fast or slow the machine is.
        endpoint.held = lambda body: (
            isinstance(body, dict) and body.get("step") in {"left", "right"}
        )
        endpoint.gate.clear()
        workflow = five_step_workflow(cast, endpoint.url)
        first = WorkerProcess(redis_broker.url, concurrency=16)
        first.start()
        second = WorkerProcess(redis_broker.url, concurrency=16)
        try:
            runs = [
                services.run_create(workflow=workflow, input={"n": i}, actor=cast.owner)
                for i in range(RUNS)
            ]
            # Kill the worker while steps are in flight and some runs are part-way through.
            wait_until(
                lambda: (
                    RunStep.objects.filter(status=RunStep.Status.RUNNING).count() >= 8
                    and RunStep.objects.filter(status=RunStep.Status.SUCCEEDED).exists()
                ),
                timeout=60,
                what="steps in flight on the first worker",
            )
            first.kill()
            in_flight = RunStep.objects.filter(status=RunStep.Status.RUNNING).count()
            assert in_flight > 0
            assert Run.objects.filter(status=Run.Status.SUCCEEDED).count() < RUNS
            endpoint.gate.set()

            second.start()
            sweep_until(
                lambda: Run.objects.filter(status__in=Run.FINISHED_STATUSES).count() == RUNS,
                timeout=120,
                what="every run to finish after the crash",
            )
        finally:
            first.kill()
            second.stop()

        statuses = collections.Counter(Run.objects.values_list("status", flat=True))
        assert statuses == {"succeeded": RUNS}, (statuses, second.output())
        recovered = RunEvent.objects.filter(payload__recovered=True).count()
        assert recovered > 0, "the crash should have left steps for the sweeper to recover"
        for run in runs:
            seqs = list(run.events.order_by("seq").values_list("seq", flat=True))
            assert seqs == list(range(1, len(seqs) + 1)), f"gap in events of {run.pk}"
            completions = collections.Counter(
                run.events.filter(type="step.status", payload__status="succeeded").values_list(
                    "node_id", flat=True
                )
            )
            assert completions == dict.fromkeys(
                ["fetch", "left", "right", "summarize", "publish"], 1
            ), f"a completion was recorded twice (or never) in {run.pk}: {completions}"
            assert run.steps.get(node_id="summarize").output == {"text": "summary ready"}

        # Every call names its (run, node), the same on every attempt, so the endpoint can
        # de-duplicate the calls a crash forced us to repeat.
        keys = collections.Counter(r["headers"]["x-idempotency-key"] for r in endpoint.requests)
        expected = {
            f"{run.pk}:{node}" for run in runs for node in ("fetch", "left", "right", "publish")
        }
        assert set(keys) == expected
        assert all(
            r["headers"]["x-idempotency-key"].endswith(r["body"]["step"]) for r in endpoint.requests
        )


def test_a_steps_worker_killed_mid_model_call_loses_nothing(cast, fast_recovery, redis_broker):
    """The steps worker as `make run` starts it (gevent on PostgreSQL + Redis, threads on the
    embedded default) is killed with SIGKILL while all its model calls wait, their database
    connections given back: the sweeper re-queues the silent steps as new attempts, a second
    steps worker finishes every run, and each run is charged for one model call only."""
    calls = 8  # the threads pool's 8 on the embedded default
    model = FakeLLMServer().start()
    model.gate.clear()
    workflow = model_workflow(cast, model.openai_base_url)
    orchestration = WorkerProcess(redis_broker.url, queues="orchestration", concurrency=4)
    first = WorkerProcess(redis_broker.url, steps=True)
    second = WorkerProcess(redis_broker.url, steps=True)
    try:
        orchestration.start()
        first.start()
        runs = [
            services.run_create(workflow=workflow, input={}, actor=cast.owner) for _ in range(calls)
        ]
        wait_until(lambda: model.in_flight >= calls, timeout=60, what="every model call in flight")
        first.kill()
        model.gate.set()  # the killed worker's calls are answered to nobody
        second.start()
        sweep_until(
            lambda: Run.objects.filter(status__in=Run.FINISHED_STATUSES).count() == calls,
            timeout=120,
            what="every run to finish after the crash",
        )
    finally:
        model.stop()
        first.kill()
        second.stop()
        orchestration.stop()
    statuses = collections.Counter(Run.objects.values_list("status", flat=True))
    assert statuses == {"succeeded": calls}, (statuses, second.output())
    assert set(RunStep.objects.values_list("attempt", flat=True)) == {2}
    assert RunEvent.objects.filter(payload__recovered=True).count() == calls
    for run in runs:
        charged = run.events.filter(type=RunEvent.Type.LLM_CALL)
        assert [e.attempt for e in charged] == [2], f"{run.pk} charged {charged.count()} calls"
    assert len(model.requests_for("openai")) == 2 * calls


def test_runs_created_while_the_broker_is_down_finish_when_it_is_back(
    cast, fast_recovery, redis_broker
):
    with CountingServer() as endpoint:
        workflow = five_step_workflow(cast, endpoint.url)
        worker = WorkerProcess(redis_broker.url, concurrency=8)
        worker.start()
        try:
            redis_broker.stop()
            client = cast.client("developer")
            started = time.monotonic()
            ids = []
            for i in range(3):
                response = client.post(
                    "/api/v1/runs/", {"workflow": workflow.pk, "input": {"n": i}}, format="json"
                )
                assert response.status_code == 201, response.content
                ids.append(response.json()["id"])
            assert time.monotonic() - started < 60  # failing fast, not hanging per request
            assert set(Run.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
                "pending"
            }

            redis_broker.start()
            sweep_until(
                lambda: Run.objects.filter(pk__in=ids, status=Run.Status.SUCCEEDED).count() == 3,
                timeout=120,
                what="runs created during the outage to finish",
            )
        finally:
            worker.stop()
