"""Celery tasks of workflows: thin shells around the services."""

from __future__ import annotations

from celery import shared_task

from sparkops.errors import DATABASE_RETRY


@shared_task(name="workflows.schedule_fire", acks_late=True, ignore_result=True, **DATABASE_RETRY)
def schedule_fire(schedule_id: int) -> str | None:
    """What beat sends for a Schedule. Safe to run any number of times for one slot."""
    from workflows import schedules

    fire = schedules.schedule_fire(schedule_id=schedule_id)
    return fire.status if fire is not None else None
