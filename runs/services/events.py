"""The run's append-only event log. Sequence numbers come from an atomic UPDATE of the run's
counter inside the caller's transaction: concurrent writers for the same run queue on that row,
and a rolled-back transaction gives its numbers back, so `seq` is gap-free, and a reader never
sees a number before every smaller one has committed (resuming by `Last-Event-ID` skips and
repeats nothing). The engine appends its events as the last statement of a transaction, so the
counter is held for the commit only: on PostgreSQL the counter UPDATE and the INSERT are one
statement."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from runs import signals
from runs.models import Run, RunEvent, RunStep
from sparkops.db import model_columns, model_from_row
from sparkops.nul import strip_nul

_collecting: ContextVar[tuple[str, list[dict[str, Any]]] | None] = ContextVar(
    "sparkops_events_collecting", default=None
)


@contextlib.contextmanager
def collecting(run_id: Any, into: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Inside the block, events appended for `run_id` go to `into` (in order) instead of the
    database; the caller writes them with its own, in one statement. The planner uses it for
    the steps it runs inline."""
    token = _collecting.set((str(run_id), into))
    try:
        yield into
    finally:
        _collecting.reset(token)


def events_append(
    run_id: Any,
    events: list[dict[str, Any]],
    *,
    queue: tuple[list[int], datetime] | None = None,
) -> list[RunEvent]:
    """Append `events` (dicts with type, payload and optionally node_id, attempt) in order.
    Callers are inside the engine's transaction; outside one, this makes its own. Returns the
    rows written (none when collected, see `collecting`).

    `queue` (step ids, time): the planner's pending → queued move of those steps, made in the
    same statement as the events on PostgreSQL (the caller holds the run lock)."""
    step_ids, queued_at = queue or ([], None)
    if step_ids and (not events or connection.vendor != "postgresql"):
        queue_steps(step_ids, queued_at)
        step_ids = []
    if not events:
        return []
    events = strip_nul(events)  # payloads quote tool and model output
    collector = _collecting.get()
    if collector is not None and collector[0] == str(run_id):
        if step_ids:
            queue_steps(step_ids, queued_at)
        collector[1].extend(events)
        return []
    with transaction.atomic(savepoint=False):
        return _append(run_id, events, step_ids, queued_at)


def events_append_starting(
    run_id: Any,
    events: list[dict[str, Any]],
    *,
    queue: tuple[list[int], datetime],
    start: int,
    attempt: int,
    worker: str,
) -> RunStep | None:
    """`events_append(run_id, events, queue=queue)`, and the queued step `start` (of attempt
    `attempt`, queued by now or by this call) started: queued → running on `worker`, as
    `attempts.step_start` would (its event is the caller's). Returns the started step (None if
    it was not queued). On PostgreSQL one statement, when the step is in `queue`. The caller
    holds the run lock (eager dispatch: runs/services/dispatch.py)."""
    step_ids, queued_at = queue
    collected = _collecting.get()
    if (
        connection.vendor != "postgresql"
        or start not in step_ids
        or not events
        or (collected is not None and collected[0] == str(run_id))
    ):
        events_append(run_id, events, queue=queue)
        return _start_queued(start, attempt, queued_at, worker)
    with transaction.atomic(savepoint=False):
        rows, started = _append_one_statement(
            run_id, strip_nul(events), step_ids, queued_at, start=(start, worker)
        )
    signals.events_appended.send(sender=RunEvent, run_id=run_id, events=rows)
    return started


def _start_queued(step_id: int, attempt: int, now: Any, worker: str) -> RunStep | None:
    table = connection.ops.quote_name(RunStep._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, started_at = %s, heartbeat_at = %s, worker = %s, "  # noqa: S608
            f"next_attempt_at = NULL WHERE id = %s AND status = %s AND attempt = %s "
            f"RETURNING {_step_columns()}",
            [RunStep.Status.RUNNING, now, now, worker, step_id, RunStep.Status.QUEUED, attempt],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    started: RunStep = model_from_row(RunStep, list(row))
    return started


def _step_columns() -> str:
    return ", ".join(connection.ops.quote_name(field.column) for field in model_columns(RunStep))


def queue_steps(step_ids: list[int], queued_at: Any) -> None:
    RunStep.objects.filter(pk__in=step_ids, status=RunStep.Status.PENDING).update(
        status=RunStep.Status.QUEUED, attempt=F("attempt") + 1, queued_at=queued_at
    )


def _advance_seq(run_id: Any, count: int) -> int:
    """Hand out `count` sequence numbers with one UPDATE ... RETURNING (PostgreSQL and
    SQLite >= 3.35 both have it); the row lock it takes is held until the caller commits."""
    table = connection.ops.quote_name(Run._meta.db_table)
    run_pk = Run._meta.pk.get_db_prep_value(run_id, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET event_seq = event_seq + %s WHERE id = %s RETURNING event_seq",  # noqa: S608
            [count, run_pk],
        )
        row = cursor.fetchone()
    if row is None:
        raise Run.DoesNotExist(run_id)
    return int(row[0])


def _append(
    run_id: Any, events: list[dict[str, Any]], step_ids: list[int], queued_at: Any
) -> list[RunEvent]:
    if connection.vendor == "postgresql":
        created, _ = _append_one_statement(run_id, events, step_ids, queued_at)
    else:
        last = _advance_seq(run_id, len(events))
        first = last - len(events) + 1
        created = RunEvent.objects.bulk_create(
            [_event(run_id, first + index, event) for index, event in enumerate(events)]
        )
    signals.events_appended.send(sender=RunEvent, run_id=run_id, events=created)
    return created


def _event(run_id: Any, seq: int, event: dict[str, Any], **fields: Any) -> RunEvent:
    return RunEvent(
        run_id=run_id,
        seq=seq,
        type=event["type"],
        node_id=event.get("node_id") or "",
        attempt=event.get("attempt"),
        payload=event.get("payload") or {},
        **fields,
    )


# The planner's queued steps moved pending → queued, and optionally one of them (`start`, eager
# dispatch) on to running; the run's counter moved and the events inserted; the started step's
# row comes back beside the last event's.
_APPEND_SQL = """
WITH queued AS (
    UPDATE runs_runstep SET
        status = CASE WHEN id = %(start)s THEN 'running' ELSE 'queued' END,
        attempt = attempt + 1, queued_at = %(queued_at)s,
        started_at = CASE WHEN id = %(start)s THEN %(queued_at)s ELSE started_at END,
        heartbeat_at = CASE WHEN id = %(start)s THEN %(queued_at)s ELSE heartbeat_at END,
        worker = CASE WHEN id = %(start)s THEN %(worker)s ELSE worker END
    WHERE id = ANY(%(queue)s::bigint[]) AND status = 'pending'
    RETURNING {step_columns}
), counter AS (
    UPDATE runs_run SET event_seq = event_seq + %(count)s WHERE id = %(run)s RETURNING event_seq
), inserted AS (
    INSERT INTO runs_runevent (run_id, seq, type, node_id, attempt, payload, created_at)
    SELECT %(run)s, counter.event_seq - %(count)s + e.ord, e.type, e.node_id, e.attempt,
           e.payload, %(now)s
    FROM counter,
         unnest(%(types)s::text[], %(nodes)s::text[], %(attempts)s::int[], %(payloads)s::jsonb[])
             WITH ORDINALITY AS e(type, node_id, attempt, payload, ord)
    RETURNING id, seq
)
SELECT inserted.id, inserted.seq, started.*
FROM inserted
LEFT JOIN queued started
    ON started.id = %(start)s AND inserted.seq = (SELECT event_seq FROM counter)
"""


def _append_one_statement(
    run_id: Any,
    events: list[dict[str, Any]],
    step_ids: list[int],
    queued_at: Any,
    *,
    start: tuple[int, str] | None = None,
) -> tuple[list[RunEvent], RunStep | None]:
    """The counter's UPDATE and the rows' INSERT in one statement (PostgreSQL): one round trip,
    and the run's counter is locked from this statement to the commit that follows it. With
    `start` (step id, worker): also that queued step started. Returns the rows written and
    the started step."""
    now = timezone.now()
    rows = [_event(run_id, 0, event, created_at=now) for event in events]
    params: dict[str, Any] = {
        "count": len(rows),
        "queue": step_ids,
        "queued_at": queued_at,
        "run": Run._meta.pk.get_db_prep_value(run_id, connection),
        "now": now,
        "types": [row.type for row in rows],
        "nodes": [row.node_id for row in rows],
        "attempts": [row.attempt for row in rows],
        "payloads": [json.dumps(row.payload) for row in rows],
    }
    params["start"], params["worker"] = start or (None, "")
    started: RunStep | None = None
    written = {}
    with connection.cursor() as cursor:
        cursor.execute(_append_sql(), params)
        for pk, seq, *step in cursor.fetchall():
            written[seq] = pk
            if step[0] is not None:
                started = model_from_row(RunStep, step)
    if not written:
        raise Run.DoesNotExist(run_id)
    first = min(written)
    for index, row in enumerate(rows):
        row.seq = first + index
        row.pk = written[row.seq]
    return rows, started


@functools.cache
def _append_sql() -> str:
    return _APPEND_SQL.format(step_columns=_step_columns())


def event_append(
    run_id: Any,
    type: str,
    payload: dict[str, Any] | None = None,
    *,
    node_id: str = "",
    attempt: int | None = None,
) -> RunEvent | None:
    written = events_append(
        run_id, [{"type": type, "payload": payload, "node_id": node_id, "attempt": attempt}]
    )
    return written[0] if written else None
