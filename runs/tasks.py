"""Celery tasks: thin shells around runs.services. Delivery is at-least-once (acks_late); every
service here is idempotent, so a re-delivered task is a no-op."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="runs.enqueue", acks_late=True, ignore_result=True)
def enqueue(run_id: str) -> None:
    from runs import services

    services.run_enqueue(run_id=run_id)


@shared_task(name="runs.advance", acks_late=True, ignore_result=True)
def advance(run_id: str) -> None:
    from runs import services

    services.run_advance(run_id=run_id)


@shared_task(name="runs.step_execute", acks_late=True, ignore_result=True)
def step_execute(step_id: int, attempt: int) -> None:
    from runs import services

    services.step_execute(step_id=step_id, attempt=attempt)


@shared_task(name="runs.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict[str, int]:
    from runs import services

    return services.sweep()
