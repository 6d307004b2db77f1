"""The triggers' Celery task: a thin shell around the firing service. Its name predates the
move out of `workflows` and stays: beat's PeriodicTask rows and queued messages carry it."""

from __future__ import annotations

from celery import shared_task

from sparkops.errors import DATABASE_RETRY

from . import schedules


@shared_task(name="workflows.schedule_fire", acks_late=True, ignore_result=True, **DATABASE_RETRY)
def schedule_fire(schedule_id: int) -> str | None:
    """What beat sends for a Schedule. Safe to run any number of times for one slot."""
    fire = schedules.schedule_fire(schedule_id=schedule_id)
    return fire.status if fire is not None else None
