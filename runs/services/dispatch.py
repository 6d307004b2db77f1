"""Sending engine tasks. Always after commit, never raising: the database is the source of
truth, and anything that fails to reach the broker is found and re-sent by the sweeper."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from sparkops.celery import app

logger = logging.getLogger(__name__)


def _send(task_name: str, args: list[Any], **options: Any) -> None:
    try:
        app.send_task(task_name, args=args, **options)
    except Exception as exc:  # broker down: the sweeper re-sends what is left queued
        logger.warning("could not send %s%s: %s", task_name, tuple(args), exc)


def send_advance(run_id: Any) -> None:
    """Plan the run again (after commit)."""
    transaction.on_commit(lambda: _send("runs.advance", [str(run_id)], queue="orchestration"))


def send_enqueue(run_id: Any) -> None:
    """Mark a freshly created run queued and plan it (after commit)."""
    transaction.on_commit(lambda: _send("runs.enqueue", [str(run_id)], queue="orchestration"))


def send_step(step_id: int, attempt: int, *, countdown: float | None = None) -> None:
    options: dict[str, Any] = {"queue": "steps"}
    if countdown:
        options["countdown"] = countdown
    transaction.on_commit(lambda: _send("runs.step_execute", [step_id, attempt], **options))


def send_child_start(step_id: int, attempt: int, *, countdown: float | None = None) -> None:
    """Start the child run of a `workflow` step (after commit); a retry after `countdown`."""
    options: dict[str, Any] = {"queue": "orchestration"}
    if countdown:
        options["countdown"] = countdown
    transaction.on_commit(lambda: _send("runs.child_start", [step_id, attempt], **options))
