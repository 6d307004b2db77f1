"""The run's append-only event log. Sequence numbers come from one atomic UPDATE of the run's
counter inside the caller's transaction: concurrent writers for the same run queue on that row,
and a rolled-back transaction gives its numbers back, so `seq` is gap-free."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F

from runs.models import Run, RunEvent


@transaction.atomic
def events_append(run_id: Any, events: list[dict[str, Any]]) -> list[RunEvent]:
    """Append `events` (dicts with type, payload and optionally node_id, attempt) in order."""
    if not events:
        return []
    Run.objects.filter(pk=run_id).update(event_seq=F("event_seq") + len(events))
    last = Run.objects.filter(pk=run_id).values_list("event_seq", flat=True).get()
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
    from runs import signals

    signals.events_appended.send(sender=RunEvent, run_id=run_id, events=created)
    return created


def event_append(
    run_id: Any,
    type: str,
    payload: dict[str, Any] | None = None,
    *,
    node_id: str = "",
    attempt: int | None = None,
) -> RunEvent:
    return events_append(
        run_id, [{"type": type, "payload": payload, "node_id": node_id, "attempt": attempt}]
    )[0]
