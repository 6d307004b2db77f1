"""Where projects listens to the run engine: reportable run events become outbox rows
(WebhookDelivery) in the engine's own transaction. A failure here must not roll the run's
transition back, so it works in a savepoint and logs instead of raising."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)


def on_events_appended(sender: Any, run_id: Any, events: list[Any], **kwargs: Any) -> None:
    from . import webhooks

    if not webhooks.run_event_types(events):
        return  # most events (steps, LLM calls...) are not reported: no query at all
    try:
        with transaction.atomic():
            webhooks.run_events_record(run_id=run_id, events=events)
    except Exception:
        logger.exception("recording webhook deliveries for run %s failed", run_id)
