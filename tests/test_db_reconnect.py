"""A connection lost during a wait (issue #14): PostgreSQL terminates the steps worker's
connections while its HTTP calls wait, and the result of every call that was made is kept. The
worker is `python -m sparkops.worker` in its own process (gevent on PostgreSQL + Redis); its
connections carry an `application_name` of their own, so the test terminates those and never
its own. The sweeper runs as beat would run it, so a step whose write was given up would show
as a second HTTP call."""

from __future__ import annotations

import collections
import os
import pprint
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from runs import services
from runs.models import Run, RunEvent, RunStep
from sparkops.testing.engine import wait_until
from sparkops.testing.processes import (
    CountingServer,
    RedisServer,
    WorkerProcess,
    broker,
    database_url,
)
from tools import services as tool_services
from workflows import services as workflow_services

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 20
NODES = ("a", "b", "c", "d", "e")  # 20 runs x 5 HTTP steps = 100 calls
KILLS = 6


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = RedisServer()
    server.start()
    try:
        with broker(server.url):
            yield server.url
    finally:
        server.close()


@pytest.fixture
def fast_recovery(settings):
    settings.SPARKOPS_HEARTBEAT_SECONDS = 0.5
    # Production's 30 s, not the crash tests' 3 s: a live step is silent while it waits for a
    # pooled connection, up to DB_POOL_TIMEOUT (10 s; the `sparkops.W001` check), and kills
    # in quick succession make that wait long. psycopg_pool checks a connection before handing
    # it out and, each time it finds one a kill ended, sleeps longer before the next (0, 1, 2,
    # 4 s), while the next kill ends the replacements; it also waits 1 s, then 2 s, before
    # opening a connection again after one was ended while it opened. Steps of this test were
    # seen silent 14 s, and 10 s re-queued them: a second call for one that had made its own.
    settings.SPARKOPS_HEARTBEAT_TIMEOUT = 30.0
    settings.SPARKOPS_QUEUED_GRACE = 2.0
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]


def http_chain(cast, url):
    tool_services.tool_create(
        actor=cast.owner,
        project=cast.project,
        name="record",
        kind="http",
        parameters={"type": "object", "properties": {"step": {"type": "string"}}},
        config={"method": "POST", "url": f"{url}/record", "body": {"step": "{{ args.step }}"}},
    )
    nodes = [
        {
            "id": node,
            "type": "tool",
            "tool": "record",
            "depends_on": [NODES[i - 1]] if i else [],
            "args": {"step": node},
            "retry": {"max_attempts": 3, "backoff_seconds": 0.1},
        }
        for i, node in enumerate(NODES)
    ]
    return workflow_services.workflow_create(
        actor=cast.owner, project=cast.project, name="chain", definition={"nodes": nodes}
    )


def terminate_backends(application_name: str) -> int:
    """pg_terminate_backend on every connection of the steps worker; how many there were."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            [application_name],
        )
        return int(cursor.fetchone()[0])


def history(keys: list[str], requests: list[dict[str, Any]]) -> str:
    """The steps behind idempotency keys `run:node`, their events and calls: why a call was
    made twice."""
    found = []
    for key in keys:
        run_id, node_id = key.split(":")
        step = RunStep.objects.filter(run_id=run_id, node_id=node_id).values().first()
        events = RunEvent.objects.filter(run_id=run_id, node_id=node_id).order_by("seq")
        calls = [r["at"] for r in requests if r["headers"]["x-idempotency-key"] == key]
        found.append(
            (step, list(events.values_list("seq", "attempt", "payload", "created_at")), calls)
        )
    return pprint.pformat(found, width=100)


def test_connections_killed_during_http_waits_cost_no_extra_call(cast, fast_recovery, redis_url):
    """Six times while HTTP calls wait, every connection of the steps worker is terminated
    (idle in its pool, or in use): each attempt reconnects and writes its result (or takes up
    a start whose commit went through), so the tool server sees exactly one call per step,
    100 in all, and no attempt is re-queued."""
    postgres = connection.vendor == "postgresql"
    application_name = f"sparkops-steps-{os.getpid()}"
    steps_env = {"DATABASE_URL": f"{database_url()}?application_name={application_name}"}
    with CountingServer(delay=0.4) as endpoint:
        workflow = http_chain(cast, endpoint.url)
        orchestration = WorkerProcess(redis_url, queues="orchestration", concurrency=4)
        steps = WorkerProcess(redis_url, steps=True, extra_env=steps_env if postgres else {})
        killed: list[int] = []
        try:
            orchestration.start()
            steps.start()
            runs = [
                services.run_create(workflow=workflow, input={}, actor=cast.owner)
                for _ in range(RUNS)
            ]
            if postgres:
                for kill in range(1, KILLS + 1):
                    # Spread over the load: after 14, 28, … calls, while the others wait.
                    wait_until(
                        lambda k=kill: len(endpoint.requests) >= 14 * k,
                        timeout=120,
                        what=f"{14 * kill} calls before kill {kill}",
                    )
                    killed.append(terminate_backends(application_name))

            def finished() -> bool:
                services.sweep()  # as beat runs it: a given-up write would be re-queued
                return Run.objects.filter(status__in=Run.FINISHED_STATUSES).count() == RUNS

            wait_until(finished, timeout=180, interval=0.5, what="every run to finish")
        finally:
            steps.stop()
            orchestration.stop()

    statuses = collections.Counter(Run.objects.values_list("status", flat=True))
    assert statuses == {"succeeded": RUNS}, (statuses, steps.output())
    keys = collections.Counter(r["headers"]["x-idempotency-key"] for r in endpoint.requests)
    twice = history([key for key, count in keys.items() if count > 1], endpoint.requests)
    assert keys == {f"{run.pk}:{node}": 1 for run in runs for node in NODES}, twice
    assert len(endpoint.requests) == RUNS * len(NODES)  # 0 extra HTTP calls
    recovered = list(
        RunEvent.objects.filter(payload__recovered=True).values_list("node_id", "payload")
    )
    # Nothing re-queued; if something was, say why (the events' reasons, the worker's log).
    assert not recovered, (recovered, steps.output())
    assert set(RunStep.objects.values_list("attempt", flat=True)) == {1}
    if postgres:
        # Each kill ended connections of the worker. Whether one was in use at that instant
        # (mid-statement or mid-transaction) rather than idle in its pool (replaced unseen: the
        # pool checks a connection before handing it out) is up to timing, so this test does
        # not count on it; runs/tests/test_engine_reconnect.py ends the connection under each
        # kind of write, deterministically.
        assert len(killed) == KILLS and all(killed), killed
