"""Where triggers listen to the run engine. Engine receivers run inside the engine's transaction
with the run row locked; an exception would roll the run's transition back, so each works in a
savepoint and logs instead of raising."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from . import events, schedules

logger = logging.getLogger(__name__)


def on_run_finished(sender: Any, run: Any, **kwargs: Any) -> None:
    for name, work in (
        ("event triggers", events.event_triggers_fire),
        ("queued schedule fire", schedules.schedule_release_queued),
    ):
        try:
            with transaction.atomic():
                work(run=run)
        except Exception:
            logger.exception("%s after run %s finished failed", name, run.pk)
