"""The bounded reconnect of an attempt's guarded writes (issue #14; sparkops.db.reconnecting):
the connection under the step's finishing write is really lost (PostgreSQL: its backend
terminated; SQLite: the database handle closed) right before that write, a given number of
times. A few losses cost nothing: the write is tried again on a fresh connection and the call
made once is kept. A connection that keeps failing is given up after RECONNECT_TRIES tries and
the attempt ends the old way: the task raises, the step stays running, and the sweeper
re-queues it once its heartbeat is silent."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, connection
from django.utils import timezone

from accounts.models import User
from runs import services
from runs.models import Run, RunStep
from runs.tests.conftest import events_of, http_tool, sends_lost, tool_node
from runs.tests.factories import make_workflow
from sparkops.db import RECONNECT_TRIES, connection_lost, reconnecting
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")


class LoseConnection:
    """An execute wrapper (Django's hook around every statement) that ends the connection
    under the step's `succeeded` write (or the statement `at` picks), the first `times` times:
    the statement then meets a really closed connection."""

    def __init__(self, times: int, at: Callable[[str, Any], bool] | None = None) -> None:
        self.times = times
        self.at = at or _succeeds_a_step
        self.losses = 0

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.losses < self.times and self.at(sql, params):
            self.losses += 1
            raw = connection.connection
            if connection.vendor == "postgresql":
                with contextlib.suppress(Exception):  # the server ends it: FATAL, 57P01
                    raw.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            else:
                raw.close()
        return execute(sql, params, many, context)


def _succeeds_a_step(sql: str, params: Any) -> bool:
    if "runs_runstep" not in sql:
        return False
    if "status = 'succeeded'" in sql:  # PostgreSQL: lock the run and write, one statement
        return True
    values = list(params.values()) if isinstance(params, dict) else list(params or ())
    return sql.startswith("UPDATE") and "succeeded" in values


def queued_http_step(cast: Any, tool_server: Any) -> tuple[Run, RunStep]:
    """A one-step run whose HTTP step is queued, attempt 1, its message never sent: this
    test executes it here, as the worker's task would."""
    http_tool(cast.project, cast.owner, "call", tool_server.url + "/call")
    workflow = make_workflow(cast.project, cast.owner, [tool_node("a", "call", {"x": 1})])
    with sends_lost():
        run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(
        status="running", started_at=now, deadline=now + timedelta(hours=1)
    )
    RunStep.objects.filter(run=run, node_id="a").update(status="queued", attempt=1, queued_at=now)
    return run, RunStep.objects.get(run=run, node_id="a")


def test_a_write_that_loses_its_connection_is_tried_again_and_the_call_kept(cast, tool_server):
    lose = LoseConnection(times=RECONNECT_TRIES - 1)
    run, step = queued_http_step(cast, tool_server)
    with connection.execute_wrapper(lose):
        services.step_execute(step_id=step.pk, attempt=1)
    assert lose.losses == RECONNECT_TRIES - 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    step.refresh_from_db()
    assert (step.status, step.attempt, step.failures) == ("succeeded", 1, 0)
    assert step.output is not None  # the answer of the call that was made, kept
    assert len(tool_server.calls("/call")) == 1
    statuses = [e.payload["status"] for e in events_of(run, "step.status", "a")]
    assert statuses == ["running", "succeeded"]  # written once, though tried four times


def test_a_lost_connection_swallowed_inside_the_write_is_tried_again(cast, tool_server):
    """The run finishes in the step's transaction, and its receivers (event triggers) work in
    savepoints that log an error instead of raising: a connection lost there is swallowed and
    Django rolls the whole write back without a word. The write is tried again all the same:
    its transaction ended with the connection."""
    lose = LoseConnection(times=1, at=lambda sql, params: "workflows_eventtrigger" in sql)
    run, step = queued_http_step(cast, tool_server)
    with connection.execute_wrapper(lose):
        services.step_execute(step_id=step.pk, attempt=1)
    assert lose.losses == 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    step.refresh_from_db()
    assert (step.status, step.attempt) == ("succeeded", 1)
    assert len(tool_server.calls("/call")) == 1
    statuses = [e.payload["status"] for e in events_of(run, "step.status", "a")]
    assert statuses == ["running", "succeeded"]


def test_a_connection_that_keeps_failing_gives_up_and_the_sweeper_recovers(
    cast, tool_server, settings
):
    lose = LoseConnection(times=100)
    run, step = queued_http_step(cast, tool_server)
    with connection.execute_wrapper(lose), pytest.raises((DatabaseError, sqlite3.Error)) as raised:
        services.step_execute(step_id=step.pk, attempt=1)
    assert connection_lost(raised.value)
    assert lose.losses == RECONNECT_TRIES  # bounded: then the error reaches the task
    step.refresh_from_db()
    assert (step.status, step.attempt) == ("running", 1)  # the old way: left to the sweeper
    assert len(tool_server.calls("/call")) == 1

    # Its worker is silent (no heartbeat): the sweeper re-queues it as attempt 2, which the
    # engine's worker runs; the give-up cost one more call.
    RunStep.objects.filter(pk=step.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert services.sweep()["steps_recovered"] == 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    step.refresh_from_db()
    assert (step.status, step.attempt, step.failures) == ("succeeded", 2, 0)
    wait_until(lambda: len(tool_server.calls("/call")) == 2, what="the second call")


def test_other_errors_are_not_tried_again(cast):
    tries = []

    def duplicate() -> None:
        tries.append(1)
        User.objects.create(email=cast.owner.email)

    with pytest.raises(IntegrityError) as raised:
        reconnecting(duplicate)
    assert len(tries) == 1
    assert not connection_lost(raised.value)
