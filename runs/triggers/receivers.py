"""Where triggers listen to the run engine. Engine receivers run inside the engine's transaction
with the run row locked; an exception would roll the run's transition back, so each works in a
savepoint (entered only when there is work) and logs instead of raising."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from . import events, schedules

logger = logging.getLogger(__name__)


def on_run_finished(sender: Any, run: Any, **kwargs: Any) -> None:
    # What listens is read first, outside any savepoint: a run nothing listens for (most runs)
    # costs these two reads and no savepoint.
    triggers = events.triggers_listening(run)
    if triggers:
        _guarded(
            "event triggers", run, lambda: events.event_triggers_fire(run=run, triggers=triggers)
        )
    schedule_id = schedules.schedule_of_run(run)
    if schedule_id is not None:
        _guarded(
            "queued schedule fire",
            run,
            lambda: schedules.schedule_release_queued(run=run, schedule_id=schedule_id),
        )


def _guarded(name: str, run: Any, work: Callable[[], Any]) -> None:
    try:
        with transaction.atomic():
            work()
    except Exception:
        logger.exception("%s after run %s finished failed", name, run.pk)
