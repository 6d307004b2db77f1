"""Recovery: what messages and workers lost (runs and steps never sent, silent workers, steps
past their timeout) and runs past their deadline. Every fix goes through the same guarded
transitions as normal execution."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from runs.engine.errors import StepError
from runs.models import Run, RunStep
from sparkops import tracing

from .attempts import step_fail, step_recover
from .dispatch import send_step
from .planning import run_advance_locked, run_enqueue
from .state import finish_run, lock_run, node_of, step_timeout


def sweep() -> dict[str, int]:
    """Find and fix what messages and workers lost. Safe to run anywhere, any number of times:
    every fix goes through the same guarded transitions as normal execution."""
    with tracing.context_scope():
        return _sweep()


def _sweep() -> dict[str, int]:
    now = timezone.now()
    grace = timedelta(seconds=settings.SPARKOPS_QUEUED_GRACE)
    counts = dict.fromkeys(
        [
            "enqueued",
            "advanced",
            "steps_resent",
            "steps_recovered",
            "steps_timed_out",
            "runs_timed_out",
        ],
        0,
    )

    # Runs committed but never sent (crash between commit and send, broker down).
    for run_id in Run.objects.filter(
        status=Run.Status.PENDING, created_at__lt=now - grace
    ).values_list("pk", flat=True):
        run_enqueue(run_id=run_id)
        counts["enqueued"] += 1

    # Runs past their deadline.
    for run_id in Run.objects.active().filter(deadline__lt=now).values_list("pk", flat=True):
        if run_time_out(run_id=run_id):
            counts["runs_timed_out"] += 1

    # Queued runs whose planning message was lost, and running runs with nothing in flight
    # (a lost advance after a step finished).
    in_flight = RunStep.objects.filter(
        run=OuterRef("pk"),
        status__in=[RunStep.Status.QUEUED, RunStep.Status.RUNNING, RunStep.Status.WAITING_APPROVAL],
    )
    stalled = Run.objects.filter(
        Q(status=Run.Status.QUEUED, queued_at__lt=now - grace)
        | Q(status=Run.Status.RUNNING, started_at__lt=now - grace, cancel_requested=False)
        & ~Exists(in_flight)
    ).values_list("pk", flat=True)
    for run_id in stalled:
        with transaction.atomic():
            run = lock_run(run_id)
            if run is not None:
                run_advance_locked(run, inline=True)
        counts["advanced"] += 1

    # Queued steps whose message was lost, or whose retry waited in the database.
    countdown_max = timedelta(seconds=settings.SPARKOPS_RETRY_COUNTDOWN_MAX)
    for step in RunStep.objects.filter(
        status=RunStep.Status.QUEUED, run__status=Run.Status.RUNNING
    ).values("pk", "attempt", "queued_at", "next_attempt_at"):
        due = step["next_attempt_at"]
        queued = step["queued_at"] or now
        long_wait = due is not None and due - queued > countdown_max and due <= now
        lost = (due or queued) < now - grace
        if long_wait or lost:
            with transaction.atomic():
                send_step(step["pk"], step["attempt"])
            counts["steps_resent"] += 1

    # Running steps whose worker went silent.
    silent = now - timedelta(seconds=settings.SPARKOPS_HEARTBEAT_TIMEOUT)
    for step in RunStep.objects.filter(
        status=RunStep.Status.RUNNING, heartbeat_at__lt=silent
    ).values("pk", "attempt"):
        if step_recover(step_id=step["pk"], attempt=step["attempt"], reason="heartbeat lost"):
            counts["steps_recovered"] += 1

    # Running steps past their own timeout (the worker may be stuck in a call).
    for step in RunStep.objects.filter(status=RunStep.Status.RUNNING).select_related(
        "run__version"
    ):
        node = node_of(step.run, step.node_id)
        limit = step_timeout(node) + settings.SPARKOPS_HEARTBEAT_SECONDS
        if step.started_at and step.started_at < now - timedelta(seconds=limit):
            error = StepError("timeout", "The step ran past its timeout.", retryable=True)
            if step_fail(step=step, attempt=step.attempt, error=error):
                counts["steps_timed_out"] += 1
    return counts


def run_time_out(*, run_id: Any) -> bool:
    with transaction.atomic():
        run = lock_run(run_id)
        if run is None or run.is_finished or not run.deadline or run.deadline > timezone.now():
            return False
        run.cancel_requested = True
        run.save(update_fields=["cancel_requested"])
        finish_run(
            run,
            Run.Status.TIMED_OUT,
            error={
                "type": "timed_out",
                "message": "The run passed its deadline (timeout_seconds).",
            },
        )
    return True
