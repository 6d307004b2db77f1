"""Celery tasks of projects: thin shells around the outbound webhook services."""

from __future__ import annotations

from celery import shared_task

from projects import webhooks


@shared_task(name="projects.webhook_deliver", acks_late=True, ignore_result=True)
def webhook_deliver(delivery_id: int) -> None:
    """One delivery attempt (a no-op if the row is not due or another sender holds it)."""
    webhooks.delivery_attempt(delivery_id=delivery_id)


@shared_task(name="projects.webhook_outbox", acks_late=True, ignore_result=True)
def webhook_outbox() -> dict[str, int]:
    """Beat: re-send due retries and deliveries whose task was lost."""
    return webhooks.outbox_sweep()
