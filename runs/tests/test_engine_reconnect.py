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
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import User
from runs import services
from runs.models import Run, RunStep
from runs.services.attempts import step_start
from runs.tests.conftest import events_of, http_tool, sends_lost, tool_node
from runs.tests.factories import make_workflow
from sparkops.db import RECONNECT_TRIES, connection_lost, reconnecting
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")


def _end_connection() -> None:
    """End this connection under Django's feet (PostgreSQL: the server terminates it)."""
    raw = connection.connection
    if connection.vendor == "postgresql":
        with contextlib.suppress(Exception):  # the server ends it: FATAL, 57P01
            raw.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    else:
        raw.close()


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
            _end_connection()
        return execute(sql, params, many, context)


def _lost_now() -> None:
    """Meet the ended connection as the caller would: a statement that raises."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


class LoseAnswer:
    """An execute wrapper that ends the connection right after the statement `at` picks has
    run (in autocommit: committed), the first `times` times, and raises as the caller would
    meet it: a write that went through, its answer lost with the connection."""

    def __init__(self, at: Callable[[str, Any], bool], times: int = 1) -> None:
        self.at = at
        self.times = times
        self.losses = 0

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if self.losses < self.times and self.at(sql, params):
            self.losses += 1
            _end_connection()
            execute("SELECT 1", None, False, context)  # raises: the connection is gone
        return result


class LoseAfterCommit:
    """An execute wrapper that, in the transaction of the statement `at` picks, ends the
    connection as that transaction commits: the commit goes through, and the connection is
    lost before anything after it (Django's on-commit work registered later) runs; the caller
    meets a lost connection. As when PostgreSQL's answer to COMMIT is lost with the
    connection."""

    def __init__(self, at: Callable[[str, Any], bool]) -> None:
        self.at = at
        self.losses = 0

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if not self.losses and self.at(sql, params):
            self.losses += 1
            transaction.on_commit(self._lose)
        return result

    def _lose(self) -> None:
        _end_connection()
        _lost_now()


def _starts_a_step(sql: str, params: Any) -> bool:
    return "runs_runstep" in sql and "SET status = 'running'" in sql


def _starts_a_step_eagerly(sql: str, params: Any) -> bool:
    return "started_at = CASE WHEN id = %(start)s" in sql or (
        connection.vendor != "postgresql"
        and sql.startswith("UPDATE")
        and "started_at" in sql
        and "running" in list(params or ())
    )


def _succeeds_a_step(sql: str, params: Any) -> bool:
    if "runs_runstep" not in sql:
        return False
    if "status = 'succeeded'" in sql:  # PostgreSQL: lock the run and write, one statement
        return True
    values = list(params.values()) if isinstance(params, dict) else list(params or ())
    return sql.startswith("UPDATE") and "succeeded" in values


def queued_http_step(cast: Any, tool_server: Any, *following: str) -> tuple[Run, RunStep]:
    """A run whose first HTTP step "a" is queued, attempt 1, its message never sent: this
    test executes it here, as the worker's task would. `following`: steps after it, a chain."""
    http_tool(cast.project, cast.owner, "call", tool_server.url + "/call")
    chain = ["a", *following]
    nodes = [tool_node(node, "call", {"x": i}, *chain[i - 1 : i]) for i, node in enumerate(chain)]
    workflow = make_workflow(cast.project, cast.owner, nodes)
    with sends_lost():
        run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(
        status="running", started_at=now, deadline=now + timedelta(hours=1)
    )
    RunStep.objects.filter(run=run, node_id="a").update(status="queued", attempt=1, queued_at=now)
    return run, RunStep.objects.get(run=run, node_id="a")


def executed_once(
    run: Run, step: RunStep, lose: Any, tool_server: Any, *, losses: int = 1, eager: bool = False
) -> Run:
    """Execute `step` here under the execute wrapper `lose`, and check that each step of the
    run succeeded at its first attempt, made its call once, and was started and ended once
    (written once, however often tried)."""
    with connection.execute_wrapper(lose):
        services.step_execute(step_id=step.pk, attempt=1, eager=eager)
    assert lose.losses == losses
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    steps = list(RunStep.objects.filter(run=run))
    assert {(s.node_id, s.status, s.attempt, s.failures) for s in steps} == {
        (s.node_id, "succeeded", 1, 0) for s in steps
    }
    assert len(tool_server.calls("/call")) == len(steps)
    for node in steps:
        statuses = [e.payload["status"] for e in events_of(run, "step.status", node.node_id)]
        assert statuses[-2:] == ["running", "succeeded"] and statuses.count("running") == 1
    return run


def test_a_write_that_loses_its_connection_is_tried_again_and_the_call_kept(cast, tool_server):
    lose = LoseConnection(times=RECONNECT_TRIES - 1)
    run, step = queued_http_step(cast, tool_server)
    executed_once(run, step, lose, tool_server, losses=RECONNECT_TRIES - 1)
    step.refresh_from_db()
    assert step.output is not None  # the answer of the call that was made, kept


def test_a_lost_connection_swallowed_inside_the_write_is_tried_again(cast, tool_server):
    """The run finishes in the step's transaction, and its receivers (event triggers) work in
    savepoints that log an error instead of raising: a connection lost there is swallowed and
    Django rolls the whole write back without a word. The write is tried again all the same:
    its transaction ended with the connection."""
    lose = LoseConnection(times=1, at=lambda sql, params: "workflows_eventtrigger" in sql)
    run, step = queued_http_step(cast, tool_server)
    executed_once(run, step, lose, tool_server)


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


# --- a start whose commit went through, its answer lost -------------------------------------
#
# A start (queued → running) is its own transaction. When the connection drops as it commits,
# the worker cannot know whether it went through: tried again, the start finds the step
# already running. Its start time marks it as this worker's own start, so the worker goes on
# with it; without that it would stop, and the step would wait, running and silent, for the
# sweeper to re-queue it as a second attempt.


def test_a_start_whose_commit_went_through_is_taken_up(cast, tool_server):
    run, step = queued_http_step(cast, tool_server)
    executed_once(run, step, LoseAnswer(at=_starts_a_step), tool_server)


def test_another_delivery_of_a_started_step_does_not_take_it_up(cast, tool_server):
    """The start time tells this worker's own start from another delivery's: a second
    delivery of the same attempt, started here a moment later, finds it running and stops."""
    run, step = queued_http_step(cast, tool_server)
    started = step_start(step_id=step.pk, attempt=1)
    assert started is not None
    again = started.started_at + timedelta(microseconds=1)
    assert step_start(step_id=step.pk, attempt=1, now=again) is None
    assert step_start(step_id=step.pk, attempt=2, now=started.started_at) is None
    taken = step_start(step_id=step.pk, attempt=1, now=started.started_at)
    assert taken is not None and taken.pk == step.pk and taken.run.pk == run.pk


@pytest.mark.parametrize(
    "lose",
    [
        pytest.param(lambda: LoseAfterCommit(at=_starts_a_step_eagerly), id="committed"),
        pytest.param(lambda: LoseConnection(times=1, at=_starts_a_step_eagerly), id="rolled-back"),
    ],
)
def test_a_step_handed_over_as_its_planning_lost_the_connection_runs_once(cast, tool_server, lose):
    """Eager dispatch (dispatch.py): the transaction that writes a's result also starts b for
    this worker. Lost as it commits, the retried write finds a's result written and plans
    nothing: b, running, is taken up here by its start time. Lost before it commits, the
    retried write plans again and sends b: it runs once, on whichever worker starts it."""
    run, a = queued_http_step(cast, tool_server, "b")
    executed_once(run, a, lose(), tool_server, eager=True)
