"""Celery tasks: thin shells around runs.services. Delivery is at-least-once (acks_late); every
service here is idempotent, so a re-delivered task is a no-op.

A database that refuses connections (or a pool with none free) is transient: the engine's tasks
retry with a short backoff (1, 2, 4 … 30 s), so accepted work moves on as soon as connections
return instead of waiting for the sweeper."""

from __future__ import annotations

from celery import shared_task

from runs import services
from sparkops.errors import DATABASE_RETRY

# Celery discovers `<app>.tasks` modules only; the triggers' task registers through this import.
from .triggers import subworkflows
from .triggers import tasks as trigger_tasks  # noqa: F401


@shared_task(name="runs.enqueue", acks_late=True, ignore_result=True, **DATABASE_RETRY)
def enqueue(run_id: str) -> None:
    services.run_enqueue(run_id=run_id)


@shared_task(name="runs.advance", acks_late=True, ignore_result=True, **DATABASE_RETRY)
def advance(run_id: str) -> None:
    services.run_advance(run_id=run_id)


@shared_task(name="runs.step_execute", acks_late=True, ignore_result=True, **DATABASE_RETRY)
def step_execute(step_id: int, attempt: int) -> None:
    services.step_execute(step_id=step_id, attempt=attempt, eager=True)


@shared_task(name="runs.steps_execute", acks_late=True, ignore_result=True, **DATABASE_RETRY)
def steps_execute(run_id: str, steps: list[list[int]]) -> None:
    services.steps_execute(run_id=run_id, steps=[(step, attempt) for step, attempt in steps])


@shared_task(name="runs.child_start", acks_late=True, ignore_result=True, **DATABASE_RETRY)
def child_start(step_id: int, attempt: int) -> None:
    subworkflows.child_start(step_id=step_id, attempt=attempt)


@shared_task(name="runs.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict[str, int]:
    return services.sweep()
