"""Where workflows listens to the run engine and to its own deletes. Engine receivers run inside
the engine's transaction with the run row locked; an exception would roll the run's transition
back, so each works in a savepoint and logs instead of raising."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)


def on_run_finished(sender: Any, run: Any, **kwargs: Any) -> None:
    from . import event_triggers, schedules

    for name, work in (
        ("event triggers", event_triggers.event_triggers_fire),
        ("queued schedule fire", schedules.schedule_release_queued),
    ):
        try:
            with transaction.atomic():
                work(run=run)
        except Exception:
            logger.exception("%s after run %s finished failed", name, run.pk)


def on_schedule_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A schedule went, maybe with its workflow or project: its beat entry goes too."""
    from . import schedules

    schedules.schedule_unsync(instance)
