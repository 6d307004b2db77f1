"""Celery tasks of projects: thin shells around the outbound webhook and files services."""

from __future__ import annotations

from celery import shared_task

from projects import files, webhooks


@shared_task(name="projects.webhook_deliver", acks_late=True, ignore_result=True)
def webhook_deliver(delivery_id: int) -> None:
    """One delivery attempt (a no-op if the row is not due or another sender holds it)."""
    webhooks.delivery_attempt(delivery_id=delivery_id)


@shared_task(name="projects.webhook_outbox", acks_late=True, ignore_result=True)
def webhook_outbox() -> dict[str, int]:
    """Beat: re-send due retries and deliveries whose task was lost."""
    return webhooks.outbox_sweep()


@shared_task(name="projects.files_purge_expired", acks_late=True, ignore_result=True)
def files_purge_expired() -> int:
    """Beat: the retention job, deleting files past their `expires_at` (rows and bytes)."""
    return files.files_purge_expired()
