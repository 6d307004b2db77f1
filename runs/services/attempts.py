"""One step attempt on a worker: start it (queued → running, fenced by its attempt number),
execute it, and record how it ended (succeeded, failed or retried, paused for an approval),
planning the run afterwards; and re-queue an attempt whose worker went silent."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from django.db import connection, transaction
from django.utils import timezone

from runs import observability, signals
from runs.engine import executors, heartbeat
from runs.engine.checkpoint import Checkpoint
from runs.engine.errors import PauseForApproval, StepError, StepPaused, StepSuperseded
from runs.models import Run, RunEvent, RunStep
from sparkops import tracing
from sparkops.db import (
    RECONNECT_TRIES,
    connection_lost,
    reconnecting,
    release_connection,
    reset_connection,
)
from sparkops.db import model_columns as _columns
from sparkops.db import model_from_row as _from_row
from sparkops.nul import strip_nul

from . import dispatch, policy_hooks
from .completions import GroupCommit, Waiting
from .dispatch import send_step
from .events import event_append, events_append
from .failures import oversized, record_failure, redacted
from .planning import run_advance_locked
from .state import (
    WORKER_NAME,
    has_successors,
    lock_run,
    node_of,
    past_deadline,
    split_item_id,
    step_timeout,
    time_out_locked,
)

logger = logging.getLogger("runs.services.engine")


def step_start(*, step_id: int, attempt: int, now: datetime | None = None) -> RunStep | None:
    """queued → running for exactly one delivery of `attempt`; None means "not yours, do
    nothing" (duplicate, stale attempt, cancelled run, or a retry that is not due yet).
    `now`, the start's time, marks the start as this delivery's: a start tried again with the
    same `now` after its connection was lost as it committed finds it went through
    (`_own_start`) and goes on, where any other delivery finds the step running and stops."""
    now = now or timezone.now()
    if connection.vendor == "postgresql":
        started = _start_one_statement(step_id, attempt, now)
        if started is not None:
            return started
    return _start_checked(step_id, attempt, now)


def _own_start(step_id: int, attempt: int, now: datetime) -> RunStep | None:
    """The step, if it is running `attempt` as started by this worker at `now` (the time a
    start writes into `started_at`, to the microsecond): a start whose commit this worker
    could not confirm (the connection was lost as it committed) that went through. Nobody
    else executes it: without this, it would wait, running and silent, for the sweeper."""
    return (
        RunStep.objects.select_related("run")
        .filter(
            pk=step_id,
            attempt=attempt,
            status=RunStep.Status.RUNNING,
            worker=WORKER_NAME,
            started_at=now,
        )
        .first()
    )


# The whole start in one statement, its own transaction: lock the run (first, as everywhere),
# if it is running, not cancelled and within its deadline; move the step queued → running,
# fenced by its attempt and due; number and write its `running` event; return both rows. The
# run's row is locked for this statement only. Nothing moves when any condition fails, and the
# careful path (`_start_checked`) then works out why (early delivery, deadline, duplicate).
_START_SQL = """
WITH run AS (
    SELECT r.id FROM runs_run r JOIN runs_runstep s ON s.run_id = r.id
    WHERE s.id = %(step)s AND r.status IN ('queued', 'running', 'waiting_approval')
      AND NOT r.cancel_requested AND (r.deadline IS NULL OR r.deadline > %(now)s)
    FOR UPDATE OF r
), step AS (
    UPDATE runs_runstep s
    SET status = 'running', started_at = %(now)s, heartbeat_at = %(now)s, worker = %(worker)s,
        next_attempt_at = NULL
    FROM run
    WHERE s.id = %(step)s AND s.run_id = run.id AND s.attempt = %(attempt)s
      AND s.status = 'queued' AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= %(due)s)
    RETURNING {step_columns}
), counter AS (
    UPDATE runs_run r SET event_seq = r.event_seq + 1 FROM step WHERE r.id = step.run_id
    RETURNING {run_columns}
), event AS (
    INSERT INTO runs_runevent (run_id, seq, type, node_id, attempt, payload, created_at)
    SELECT counter.id, counter.event_seq, 'step.status', step.node_id, step.attempt,
           %(payload)s::jsonb, %(now)s
    FROM counter, step
    RETURNING id
)
SELECT step.*, counter.*, event.id FROM step, counter, event
"""


def _start_sql() -> str:
    step_fields = _columns(RunStep)
    run_fields = _columns(Run)
    return _START_SQL.format(
        step_columns=", ".join(f"s.{field.column}" for field in step_fields),
        run_columns=", ".join(f"r.{field.column}" for field in run_fields),
    )


def _start_one_statement(step_id: int, attempt: int, now: datetime) -> RunStep | None:
    payload = {"status": "running", "worker": WORKER_NAME}
    with connection.cursor() as cursor:
        cursor.execute(
            _start_sql(),
            {
                "step": step_id,
                "attempt": attempt,
                "now": now,
                "due": now + timedelta(seconds=0.5),
                "worker": WORKER_NAME,
                "payload": json.dumps(payload),
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    width = len(RunStep._meta.concrete_fields)
    step: RunStep = _from_row(RunStep, list(row[:width]))
    run: Run = _from_row(Run, list(row[width:-1]))
    step.run = run
    event = RunEvent(
        pk=row[-1],
        run_id=run.pk,
        seq=run.event_seq,
        type=RunEvent.Type.STEP_STATUS,
        node_id=step.node_id,
        attempt=attempt,
        payload=payload,
        created_at=now,
    )
    signals.events_appended.send(sender=RunEvent, run_id=run.pk, events=[event])
    return step


def _start_checked(step_id: int, attempt: int, now: datetime) -> RunStep | None:
    """The start with every case told apart: an early delivery is sent again for when it is
    due, a run past its deadline times out, this delivery's own start that went through is
    taken up."""
    step = (
        RunStep.objects.filter(pk=step_id)
        .values("run_id", "attempt", "status", "next_attempt_at")
        .first()
    )
    if step is None or step["attempt"] != attempt:
        return None
    if step["status"] == RunStep.Status.RUNNING:
        return _own_start(step_id, attempt, now)
    if step["status"] != RunStep.Status.QUEUED:
        return None
    due = step["next_attempt_at"]
    if due is not None and due > now + timedelta(seconds=0.5):
        # Delivered early (redelivery, or a sweeper re-send): come back when due.
        send_step(step_id, attempt, countdown=(due - now).total_seconds())
        return None
    with transaction.atomic():
        run = lock_run(step["run_id"])
        if run is None or run.is_finished or run.cancel_requested:
            return None
        if past_deadline(run, now):  # no new call once the run is out of time
            time_out_locked(run)
            return None
        moved = RunStep.objects.filter(
            pk=step_id, attempt=attempt, status=RunStep.Status.QUEUED
        ).update(
            status=RunStep.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker=WORKER_NAME,
            next_attempt_at=None,
        )
        if not moved:
            return None
        started = RunStep.objects.select_related("run").get(pk=step_id)
        event_append(
            run.pk,
            RunEvent.Type.STEP_STATUS,
            {"status": "running", "worker": WORKER_NAME},
            node_id=started.node_id,
            attempt=attempt,
        )
    return started


# Several queued steps of one run started in one statement (a message that carries several,
# `steps_execute`): the run locked if it is running, not cancelled and within its deadline;
# each step moved queued → running fenced by its attempt and due time; the run's counter moved
# once and one `running` event written per step, numbered in step order.
_START_MANY_SQL = """
WITH run AS (
    SELECT r.id FROM runs_run r
    WHERE r.id = %(run)s AND r.status IN ('queued', 'running', 'waiting_approval')
      AND NOT r.cancel_requested AND (r.deadline IS NULL OR r.deadline > %(now)s)
    FOR UPDATE
), step AS (
    UPDATE runs_runstep s
    SET status = 'running', started_at = %(now)s, heartbeat_at = %(now)s, worker = %(worker)s,
        next_attempt_at = NULL
    FROM run, unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS v(id, attempt)
    WHERE s.id = v.id AND s.run_id = run.id AND s.attempt = v.attempt
      AND s.status = 'queued' AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= %(due)s)
    RETURNING {step_columns}
), numbered AS (
    SELECT step.id, step.node_id, step.attempt,
           row_number() OVER (ORDER BY step.id) AS ord, count(*) OVER () AS total
    FROM step
), counter AS (
    UPDATE runs_run r SET event_seq = r.event_seq + (SELECT count(*) FROM step)
    FROM run WHERE r.id = run.id AND EXISTS (SELECT 1 FROM step)
    RETURNING {run_columns}
), event AS (
    INSERT INTO runs_runevent (run_id, seq, type, node_id, attempt, payload, created_at)
    SELECT counter.id, counter.event_seq - numbered.total + numbered.ord, 'step.status',
           numbered.node_id, numbered.attempt, %(payload)s::jsonb, %(now)s
    FROM counter, numbered
    RETURNING id, seq, node_id
)
SELECT step.*, counter.*, event.id, event.seq
FROM step JOIN event ON event.node_id = step.node_id, counter
ORDER BY event.seq
"""


@functools.cache
def _start_many_sql() -> str:
    return _START_MANY_SQL.format(
        step_columns=", ".join(f"s.{field.column}" for field in _columns(RunStep)),
        run_columns=", ".join(f"r.{field.column}" for field in _columns(Run)),
    )


def steps_start(
    *, run_id: Any, steps: list[tuple[int, int]], now: datetime | None = None
) -> list[RunStep]:
    """queued → running for each of `steps` (id, attempt) of one run that is still queued at
    that attempt and due (PostgreSQL: one statement); the others are left for the careful
    one-by-one start (`step_start` with the same `now`), which tells why, or finds that a
    start of this statement went through though its connection was lost as it committed."""
    now = now or timezone.now()
    payload = {"status": "running", "worker": WORKER_NAME}
    with connection.cursor() as cursor:
        cursor.execute(
            _start_many_sql(),
            {
                "run": Run._meta.pk.get_db_prep_value(run_id, connection),
                "ids": [step_id for step_id, _ in steps],
                "attempts": [attempt for _, attempt in steps],
                "now": now,
                "due": now + timedelta(seconds=0.5),
                "worker": WORKER_NAME,
                "payload": json.dumps(payload),
            },
        )
        rows = cursor.fetchall()
    width, run_width = len(_columns(RunStep)), len(_columns(Run))
    started, events, run = [], [], None
    for row in rows:
        step: RunStep = _from_row(RunStep, list(row[:width]))
        if run is None:
            run = _from_row(Run, list(row[width : width + run_width]))
        step.run = run
        started.append(step)
        events.append(
            RunEvent(
                pk=row[-2],
                run_id=run.pk,
                seq=row[-1],
                type=RunEvent.Type.STEP_STATUS,
                node_id=step.node_id,
                attempt=step.attempt,
                payload=payload,
                created_at=now,
            )
        )
    if events:
        signals.events_appended.send(sender=RunEvent, run_id=run_id, events=events)
    return started


@dataclass
class _Result:
    """A step's result on its way to the database (`step_succeed`)."""

    step: RunStep
    attempt: int
    output: Any
    fields: dict[str, Any]  # what the checkpoint deferred (the step's input)
    events: list[dict[str, Any]]


def step_succeed(
    *, step: RunStep, attempt: int, output: Any, checkpoint: Checkpoint | None = None
) -> bool:
    """running → succeeded, once, with what the checkpoint deferred; then plan the run.
    Returns False for a discarded result (a result after the run's deadline is discarded and
    the run times out). On PostgreSQL, results of the same run that end together are written
    in one transaction (`completions`); inside a caller's transaction, alone."""
    too_large = oversized(output)
    if too_large is not None:
        return step_fail(step=step, attempt=attempt, checkpoint=checkpoint, error=too_large)
    output = strip_nul(output)  # a tool's or model's NULs: PostgreSQL cannot store them
    fields, events = checkpoint.deferred() if checkpoint is not None else ({}, [])
    result = _Result(step, attempt, output, fields, events)
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return _results.submit(step.run_id, result)
    alone = Waiting(result)
    reconnecting(lambda: _write_results([alone]))
    return alone.result()


def _write_results(batch: list[Waiting[_Result]]) -> None:
    """Write a batch of one run's results in one transaction, fenced each by its attempt and
    all by the run's deadline, then plan the run once (or only append the events when no
    result changes the plan). Sets each one's outcome."""
    with transaction.atomic():
        now = timezone.now()
        run, moved = _lock_and_succeed(batch, now)
        events: list[dict[str, Any]] = []
        plan = False
        maps: set[str | None] = set()
        for waiting in batch:
            result = waiting.item
            waiting.outcome = run is not None and (result.step.pk, result.attempt) in moved
            if run is None:
                continue
            if not waiting.outcome:
                # Past the run's deadline (the run times out), or already finished, cancelled
                # or superseded: an idempotent no-op.
                _out_of_time(run, result.step, result.attempt, result.events, now)
                continue
            step = result.step
            duration = int((now - (step.started_at or now)).total_seconds() * 1000)
            events += result.events
            events.append(
                {
                    "type": RunEvent.Type.STEP_STATUS,
                    "node_id": step.node_id,
                    "attempt": result.attempt,
                    "payload": {"status": "succeeded", "duration_ms": duration},
                }
            )
            # A step with no successors changes the plan only when it was the last one in
            # flight (the run may now finish, or wait for an approval); otherwise the last of
            # the others plans. A 500-node fan-out plans once, not 500 times.
            plan = plan or has_successors(run, step.node_id)
            if step.item_index is not None:
                maps.add(split_item_id(step.node_id)[0])
        if run is None or not moved:
            return
        # A map's item plans when its map refills its window or ends (asked once a map).
        plan = plan or any(_map_needs_planning(run.pk, map_id) for map_id in maps if map_id)
        if plan or not _in_flight(run.pk):
            run_advance_locked(run, inline=True, events=events)
        else:
            events_append(run.pk, events)


def _in_flight(run_id: Any) -> bool:
    """Whether a step of the run is queued or running (a map's own row is not in flight: it
    runs while its items do). SQL written once: asked on every result of a fan-out."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM runs_runstep WHERE run_id = %s AND status IN (%s, %s) "
            "AND type <> 'map' LIMIT 1",
            [
                Run._meta.pk.get_db_prep_value(run_id, connection),
                RunStep.Status.QUEUED,
                RunStep.Status.RUNNING,
            ],
        )
        return cursor.fetchone() is not None


_results: GroupCommit[_Result] = GroupCommit(
    lambda batch: reconnecting(lambda: _write_results(batch))
)


def _map_needs_planning(run_id: Any, map_id: str) -> bool:
    """Items' ends change their map's plan when items wait for room in the window, or when
    none is left in flight (the map ends)."""
    waiting = set(
        RunStep.objects.filter(
            run_id=run_id,
            item_index__isnull=False,
            node_id__startswith=f"{map_id}[",
            status__in=[RunStep.Status.PENDING, RunStep.Status.QUEUED, RunStep.Status.RUNNING],
        )
        .values_list("status", flat=True)
        .distinct()
    )
    return RunStep.Status.PENDING in waiting or not waiting


# Lock the run (first, as everywhere) and write the steps' results, each fenced by its attempt
# and all by the run's deadline, in one statement; returns the locked run row and the
# (step, attempt) of each result written.
_SUCCEED_SQL = """
WITH run AS (
    SELECT {run_columns} FROM runs_run r WHERE r.id = %(run)s FOR UPDATE
), done AS (
    UPDATE runs_runstep s
    SET status = 'succeeded', output = v.output, error = NULL, state = NULL,
        finished_at = %(now)s, input = CASE WHEN v.has_input THEN v.input ELSE s.input END
    FROM run, unnest(%(ids)s::bigint[], %(attempts)s::int[], %(outputs)s::jsonb[],
                     %(inputs)s::jsonb[], %(has_input)s::bool[])
              AS v(id, attempt, output, input, has_input)
    WHERE s.id = v.id AND s.run_id = run.id AND s.attempt = v.attempt
      AND s.status = 'running' AND (run.deadline IS NULL OR run.deadline > %(now)s)
    RETURNING s.id, s.attempt
)
SELECT run.*, ARRAY(SELECT id FROM done), ARRAY(SELECT attempt FROM done) FROM run
"""


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _lock_and_succeed(
    batch: list[Waiting[_Result]], now: Any
) -> tuple[Run | None, set[tuple[int, int]]]:
    """Returns the locked run and the (step, attempt) of each result written: a stale attempt
    of a step and its current one may be in one batch, and only the current one is."""
    results = [waiting.item for waiting in batch]
    run_id = results[0].step.run_id
    if connection.vendor != "postgresql":
        run = lock_run(run_id)
        if run is None or past_deadline(run, now):
            return run, set()
        moved = set()
        for result in results:
            written = {"output": result.output, "error": None, "finished_at": now, "state": None}
            if RunStep.objects.filter(
                pk=result.step.pk, attempt=result.attempt, status=RunStep.Status.RUNNING
            ).update(status=RunStep.Status.SUCCEEDED, **written, **result.fields):
                moved.add((result.step.pk, result.attempt))
        return run, moved
    params: dict[str, Any] = {
        "run": Run._meta.pk.get_db_prep_value(run_id, connection),
        "now": now,
        "ids": [result.step.pk for result in results],
        "attempts": [result.attempt for result in results],
        "outputs": [_json(result.output) for result in results],
        "inputs": [_json(result.fields.get("input")) for result in results],
        "has_input": ["input" in result.fields for result in results],
    }
    with connection.cursor() as cursor:
        cursor.execute(_succeed_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return None, set()
    return _from_row(Run, list(row[:-2])), set(zip(row[-2], row[-1], strict=True))


@functools.cache
def _succeed_sql() -> str:
    return _SUCCEED_SQL.format(
        run_columns=", ".join(f"r.{field.column}" for field in _columns(Run))
    )


def step_fail(
    *, step: RunStep, attempt: int, error: StepError, checkpoint: Checkpoint | None = None
) -> bool:
    """A failed attempt: re-queue with backoff if the error is retryable and attempts remain,
    else running → failed and plan the run (which fails it unless continue_on_failure). What
    the checkpoint deferred (input, call events) is written with it."""
    fields, deferred_events = checkpoint.deferred() if checkpoint is not None else ({}, [])
    with transaction.atomic():
        run = lock_run(step.run_id)
        if run is None:
            return False
        current = RunStep.objects.select_for_update().filter(pk=step.pk).first()
        if (
            current is None
            or current.attempt != attempt
            or current.status != RunStep.Status.RUNNING
        ):
            return False
        if _out_of_time(run, step, attempt, deferred_events):
            return True
        events: list[dict[str, Any]] = list(deferred_events)
        status = record_failure(
            run,
            RunStep.objects.filter(pk=step.pk, attempt=attempt),
            step_id=step.pk,
            node_id=step.node_id,
            attempt=attempt,
            failures=current.failures + 1,
            error=error,
            events=events,
            **fields,
        )
        if status == RunStep.Status.FAILED:
            run_advance_locked(run, inline=True, events=events)
        else:
            events_append(run.pk, events)
    return True


def step_pause(
    *, step: RunStep, attempt: int, state: dict[str, Any], request: dict[str, Any]
) -> NoReturn:
    """running → waiting_approval, once, for a call inside the attempt that waits for a
    person's approval: `state` (what resuming needs, secrets redacted) is saved on the step and
    `request` is the `approval.requested` payload; then plan the run (it waits for approval
    once nothing else is in flight). Always raises: StepPaused, or StepSuperseded for an
    attempt that is no longer current. Approving re-queues the step (lifecycle.step_decide)."""
    with transaction.atomic():
        run = lock_run(step.run_id)
        if run is None or run.is_finished or run.cancel_requested:
            raise StepSuperseded()
        if _out_of_time(run, step, attempt, []):
            raise StepSuperseded()
        moved = RunStep.objects.filter(
            pk=step.pk, attempt=attempt, status=RunStep.Status.RUNNING
        ).update(status=RunStep.Status.WAITING_APPROVAL, state=state, heartbeat_at=None)
        if not moved:
            raise StepSuperseded()
        run_advance_locked(
            run,
            inline=True,
            events=[
                {
                    "type": RunEvent.Type.STEP_STATUS,
                    "node_id": step.node_id,
                    "attempt": attempt,
                    "payload": {"status": "waiting_approval"},
                },
                {
                    "type": RunEvent.Type.APPROVAL_REQUESTED,
                    "node_id": step.node_id,
                    "attempt": attempt,
                    "payload": request,
                },
            ],
        )
    raise StepPaused()


def _out_of_time(
    run: Any, step: RunStep, attempt: int, events: list[dict[str, Any]], now: Any = None
) -> bool:
    """Call with the run locked, as an attempt ends: past the run's deadline, whatever the
    attempt brought is discarded and the run times out (what the attempt recorded on the way,
    `events`, is kept). True when that happened."""
    if run.is_finished or not past_deadline(run, now):
        return False
    current = RunStep.objects.filter(
        pk=step.pk, attempt=attempt, status=RunStep.Status.RUNNING
    ).exists()
    if not current:
        return False
    time_out_locked(run, events=list(events))
    return True


def step_recover(*, step_id: int, attempt: int, reason: str) -> bool:
    """A running attempt whose worker went silent: re-queue it as a new attempt (the lost worker,
    if it ever comes back, is fenced off by the attempt number). Does not count as a failure."""
    with transaction.atomic():
        step = RunStep.objects.filter(pk=step_id).values("run_id").first()
        if step is None:
            return False
        run = lock_run(step["run_id"])
        if run is None or run.is_finished:
            return False
        now = timezone.now()
        moved = RunStep.objects.filter(
            pk=step_id, attempt=attempt, status=RunStep.Status.RUNNING
        ).update(
            status=RunStep.Status.QUEUED,
            attempt=attempt + 1,
            queued_at=now,
            next_attempt_at=None,
            heartbeat_at=None,
            worker="",
        )
        if not moved:
            return False
        node_id = RunStep.objects.filter(pk=step_id).values_list("node_id", flat=True).get()
        event_append(
            run.pk,
            RunEvent.Type.STEP_STATUS,
            {"status": "queued", "recovered": True, "reason": reason},
            node_id=node_id,
            attempt=attempt,
        )
        send_step(step_id, attempt + 1)
    return True


def step_execute(*, step_id: int, attempt: int, eager: bool = False) -> None:
    """One step attempt. With `eager` (the `steps` worker's task), then each step its planning
    handed to this worker (eager dispatch, `dispatch.taking`), each under the trace context it
    was planned in."""
    if not eager:
        _attempt(step_id=step_id, attempt=attempt)
        return
    _taking(step_id, attempt)


def _taking(
    step_id: int,
    attempt: int,
    started: RunStep | None = None,
    started_at: datetime | None = None,
) -> None:
    """The attempt, then each step its planning hands to this worker (eager dispatch). A step
    handed over in a transaction whose commit was not confirmed (its connection was lost as it
    committed, and the write was tried again) is started the careful way with the planning's
    start time: taken up if that commit went through, else started now if still queued."""
    with dispatch.taking() as taking:
        try:
            _attempt(step_id=step_id, attempt=attempt, started=started, started_at=started_at)
            while (handed := taking.next()) is not None:
                following, carried, confirmed = handed
                with tracing.attached(carried):
                    _attempt(
                        step_id=following.pk,
                        attempt=following.attempt,
                        started=following if confirmed else None,
                        started_at=following.started_at,
                    )
        finally:
            if taking.handed is not None:  # handed over, never begun: give it back now
                with contextlib.suppress(Exception):  # else the sweeper finds it silent
                    _give_back(*taking.handed)


def _give_back(step: RunStep, carried: Any, confirmed: bool) -> None:
    """Re-queue a step handed to this worker that it will not execute (its task is ending
    with an error): the next attempt, sent at once, not after the sweeper finds it silent."""
    started_at = step.started_at
    if confirmed or (started_at and _own_start(step.pk, step.attempt, started_at) is not None):
        step_recover(step_id=step.pk, attempt=step.attempt, reason="not_begun")


def steps_execute(*, run_id: Any, steps: list[tuple[int, int]]) -> None:
    """A `steps` message that carries several queued steps of one run (a fan-out, sent by
    `dispatch.send_steps` to a gevent worker): started together in one statement, then each
    run at once in a greenlet of its own as its own attempt (eager dispatch included); the ones
    the statement did not start go the careful one-by-one way. Elsewhere than on gevent with
    PostgreSQL (a threads worker would run them one after another; the start statement is
    PostgreSQL's), the first runs here and the others are sent on, one message each."""
    if not _on_gevent() or connection.vendor != "postgresql":
        (first, first_attempt), *others = steps
        for step_id, attempt in others:
            dispatch.send_step(step_id, attempt)
        step_execute(step_id=first, attempt=first_attempt, eager=True)
        return
    now = timezone.now()
    started = reconnecting(lambda: steps_start(run_id=run_id, steps=steps, now=now))
    begun = {step.pk for step in started}
    work: list[tuple[int, int, RunStep | None, datetime]] = [
        (step.pk, step.attempt, step, now) for step in started
    ]
    work += [(step_id, attempt, None, now) for step_id, attempt in steps if step_id not in begun]
    # Each greenlet takes a connection of its own: this one waits for them holding none (a
    # message's worth of steps per connection would empty the pool and wait on itself).
    release_connection()
    _run_together([functools.partial(_own_connection, *item) for item in work])


def _on_gevent() -> bool:
    """Whether this process runs on gevent (`celery -P gevent` patches threading first)."""
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def _run_together(calls: list[Callable[[], None]]) -> None:
    """Run `calls` at once, each in a greenlet with a copy of this context, and wait for all;
    the first error raised (if any) is raised once all have ended."""
    import gevent

    greenlets = [gevent.spawn(contextvars.copy_context().run, call) for call in calls]
    gevent.joinall(greenlets)
    for greenlet in greenlets:
        if greenlet.exception is not None:
            raise greenlet.exception


def _own_connection(
    step_id: int, attempt: int, started: RunStep | None, started_at: datetime
) -> None:
    """One step of `steps_execute`, in its greenlet, on that greenlet's own connection, given
    back to the pool at the end (no task end does it for a greenlet of ours)."""
    try:
        _taking(step_id, attempt, started, started_at)
    finally:
        connection.close()


@observability.step_scope
def _attempt(
    *,
    step_id: int,
    attempt: int,
    started: RunStep | None = None,
    started_at: datetime | None = None,
) -> None:
    """One attempt; `started`: a step already started here (eager dispatch, a message's start
    statement); `started_at`: the time its start (this one, or one made earlier here whose
    commit was not confirmed) writes."""
    # Fenced by the attempt number, and marked as this delivery's by its time: a start whose
    # commit went through before the connection dropped is not repeated, and the second try
    # finds the step running as started here and goes on (any other delivery stops there).
    now = started_at or timezone.now()
    step = started or reconnecting(lambda: step_start(step_id=step_id, attempt=attempt, now=now))
    if step is None:
        return
    if step.type == "agent":
        # An agent's loop can run for minutes: policies are read afresh at each call.
        _execute(step, attempt)
        return
    with policy_hooks.cached():
        _execute(step, attempt)


# How an attempt ends is written through `reconnecting`: the first write after a model or HTTP
# wait is where a connection the server dropped meanwhile shows, and every one of these writes
# is fenced by the attempt number (running → …), so a retried write cannot apply twice. Only
# when the retries are spent does the error reach Celery: the task fails and the sweeper
# re-queues the silent attempt, as before.


def _call_executor(step: RunStep, node: dict[str, Any], checkpoint: Checkpoint) -> Any:
    """The executor, started over on a fresh connection if it loses its own before making
    any model or tool call (it has only read by then, its writes deferred or idempotent), at
    most RECONNECT_TRIES times in all."""
    for tries in range(1, RECONNECT_TRIES + 1):
        try:
            return executors.execute(step=step, node=node, checkpoint=checkpoint)
        except Exception as exc:
            if (
                checkpoint.calls
                or tries >= RECONNECT_TRIES
                or connection.in_atomic_block
                or not connection_lost(exc)
            ):
                raise
            logger.warning("step %s: connection lost before any call; starting over", step.pk)
            reset_connection()
            checkpoint.events.clear()
    raise AssertionError("unreachable")  # pragma: no cover


def _execute(step: RunStep, attempt: int) -> None:
    node = node_of(step.run, step.node_id)
    checkpoint = Checkpoint(step, attempt, step_timeout(node), deferred_writes=step.type != "agent")
    try:
        with heartbeat.beating(step.pk, attempt), observability.step_span(step, attempt):
            try:
                output = _call_executor(step, node, checkpoint)
            except PauseForApproval as pause:
                state, request = pause.state, pause.request
                reconnecting(
                    lambda: step_pause(step=step, attempt=attempt, state=state, request=request)
                )
    except StepPaused:  # waiting for an approval, its loop saved (step_pause)
        return
    except StepSuperseded:
        logger.info("step %s attempt %s superseded; result discarded", step.pk, attempt)
        return
    except StepError as exc:
        error = redacted(exc, checkpoint)
        reconnecting(
            lambda: step_fail(step=step, attempt=attempt, error=error, checkpoint=checkpoint)
        )
        return
    except Exception as exc:
        if connection_lost(exc):
            # The executor lost the connection after a call was made (or kept losing it): not
            # the step's failure. The last resort: the attempt is re-queued as the next one
            # now, not after the sweeper finds it silent.
            logger.warning("step %s attempt %s lost its database connection", step.pk, attempt)
            reconnecting(
                lambda: step_recover(step_id=step.pk, attempt=attempt, reason="connection_lost")
            )
            return
        # A bug or an unexpected library error: fail clearly, don't retry.
        logger.exception("step %s attempt %s crashed", step.pk, attempt)
        error = redacted(
            StepError("internal_error", f"{exc.__class__.__name__}: {exc}"), checkpoint
        )
        reconnecting(
            lambda: step_fail(step=step, attempt=attempt, error=error, checkpoint=checkpoint)
        )
        return
    # Written through `reconnecting` (step_succeed): the first write after a model or HTTP
    # wait is where a connection the server dropped meanwhile shows.
    step_succeed(
        step=step, attempt=attempt, output=checkpoint.secrets.redact(output), checkpoint=checkpoint
    )
