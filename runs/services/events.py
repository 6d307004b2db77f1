"""The run's append-only event log. Sequence numbers come from one atomic UPDATE of the run's
counter inside the caller's transaction: concurrent writers for the same run queue on that row,
and a rolled-back transaction gives its numbers back, so `seq` is gap-free."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.db import connection, transaction

from runs import signals
from runs.models import Run, RunEvent
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


def events_append(run_id: Any, events: list[dict[str, Any]]) -> list[RunEvent]:
    """Append `events` (dicts with type, payload and optionally node_id, attempt) in order.
    Callers are inside the engine's transaction; outside one, this makes its own. Returns the
    rows written (none when collected, see `collecting`)."""
    if not events:
        return []
    events = strip_nul(events)  # payloads quote tool and model output
    collector = _collecting.get()
    if collector is not None and collector[0] == str(run_id):
        collector[1].extend(events)
        return []
    with transaction.atomic(savepoint=False):
        return _append(run_id, events)


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


def _append(run_id: Any, events: list[dict[str, Any]]) -> list[RunEvent]:
    last = _advance_seq(run_id, len(events))
    first = last - len(events) + 1
    rows = [
        RunEvent(
            run_id=run_id,
            seq=first + index,
            type=event["type"],
            node_id=event.get("node_id") or "",
            attempt=event.get("attempt"),
            payload=event.get("payload") or {},
        )
        for index, event in enumerate(events)
    ]
    created = RunEvent.objects.bulk_create(rows)
    signals.events_appended.send(sender=RunEvent, run_id=run_id, events=created)
    return created


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
