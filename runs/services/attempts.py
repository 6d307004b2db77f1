"""One step attempt on a worker: start it (queued → running, fenced by its attempt number),
execute it, and record how it ended (succeeded, failed or retried, paused for an approval),
planning the run afterwards; and re-queue an attempt whose worker went silent."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, NoReturn

from django.db import transaction
from django.utils import timezone

from runs import observability
from runs.engine import executors, heartbeat
from runs.engine.checkpoint import Checkpoint
from runs.engine.errors import PauseForApproval, StepError, StepPaused, StepSuperseded
from runs.models import RunEvent, RunStep
from sparkops.nul import strip_nul

from . import policy_hooks
from .dispatch import send_step
from .events import event_append, events_append
from .failures import oversized, record_failure, redacted
from .planning import run_advance_locked
from .state import WORKER_NAME, has_successors, lock_run, node_of, step_timeout

logger = logging.getLogger("runs.services.engine")


def step_start(*, step_id: int, attempt: int) -> RunStep | None:
    """queued → running for exactly one delivery of `attempt`; None means "not yours, do
    nothing" (duplicate, stale attempt, cancelled run, or a retry that is not due yet)."""
    step = (
        RunStep.objects.filter(pk=step_id)
        .values("run_id", "attempt", "status", "next_attempt_at")
        .first()
    )
    if step is None or step["attempt"] != attempt or step["status"] != RunStep.Status.QUEUED:
        return None
    now = timezone.now()
    due = step["next_attempt_at"]
    if due is not None and due > now + timedelta(seconds=0.5):
        # Delivered early (redelivery, or a sweeper re-send): come back when due.
        send_step(step_id, attempt, countdown=(due - now).total_seconds())
        return None
    with transaction.atomic():
        run = lock_run(step["run_id"])
        if run is None or run.is_finished or run.cancel_requested:
            return None
        moved = RunStep.objects.filter(
            pk=step_id, attempt=attempt, status=RunStep.Status.QUEUED
        ).update(
            status=RunStep.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker=WORKER_NAME,
            next_attempt_at=None,
        )
        if not moved:
            return None
        started = RunStep.objects.select_related("run").get(pk=step_id)
        event_append(
            run.pk,
            RunEvent.Type.STEP_STATUS,
            {"status": "running", "worker": WORKER_NAME},
            node_id=started.node_id,
            attempt=attempt,
        )
    return started


def step_succeed(
    *, step: RunStep, attempt: int, output: Any, checkpoint: Checkpoint | None = None
) -> bool:
    """running → succeeded, once, with what the checkpoint deferred; then plan the run.
    Returns False for a discarded result."""
    too_large = oversized(output)
    if too_large is not None:
        return step_fail(step=step, attempt=attempt, checkpoint=checkpoint, error=too_large)
    output = strip_nul(output)  # a tool's or model's NULs: PostgreSQL cannot store them
    fields, events = checkpoint.deferred() if checkpoint is not None else ({}, [])
    with transaction.atomic():
        run = lock_run(step.run_id)
        if run is None:
            return False
        now = timezone.now()
        moved = RunStep.objects.filter(
            pk=step.pk, attempt=attempt, status=RunStep.Status.RUNNING
        ).update(
            status=RunStep.Status.SUCCEEDED,
            output=output,
            error=None,
            finished_at=now,
            state=None,
            **fields,
        )
        if not moved:
            return False  # already finished, cancelled or superseded: idempotent no-op
        duration = int((now - (step.started_at or now)).total_seconds() * 1000)
        events = [
            *events,
            {
                "type": RunEvent.Type.STEP_STATUS,
                "node_id": step.node_id,
                "attempt": attempt,
                "payload": {"status": "succeeded", "duration_ms": duration},
            },
        ]
        # A step with no successors changes the plan only when it was the last one in
        # flight (the run may now finish, or wait for an approval); otherwise the last of
        # the others plans. A 500-node fan-out plans once, not 500 times.
        if has_successors(run, step.node_id) or not (
            RunStep.objects.filter(
                run_id=run.pk, status__in=[RunStep.Status.QUEUED, RunStep.Status.RUNNING]
            ).exists()
        ):
            run_advance_locked(run, inline=True, events=events)
        else:
            events_append(run.pk, events)
    return True


def step_fail(
    *, step: RunStep, attempt: int, error: StepError, checkpoint: Checkpoint | None = None
) -> bool:
    """A failed attempt: re-queue with backoff if the error is retryable and attempts remain,
    else running → failed and plan the run (which fails it unless continue_on_failure). What
    the checkpoint deferred (input, call events) is written with it."""
    fields, deferred_events = checkpoint.deferred() if checkpoint is not None else ({}, [])
    with transaction.atomic():
        run = lock_run(step.run_id)
        if run is None:
            return False
        current = RunStep.objects.select_for_update().filter(pk=step.pk).first()
        if (
            current is None
            or current.attempt != attempt
            or current.status != RunStep.Status.RUNNING
        ):
            return False
        events: list[dict[str, Any]] = list(deferred_events)
        status = record_failure(
            run,
            RunStep.objects.filter(pk=step.pk, attempt=attempt),
            step_id=step.pk,
            node_id=step.node_id,
            attempt=attempt,
            failures=current.failures + 1,
            error=error,
            events=events,
            **fields,
        )
        if status == RunStep.Status.FAILED:
            run_advance_locked(run, inline=True, events=events)
        else:
            events_append(run.pk, events)
    return True


def step_pause(
    *, step: RunStep, attempt: int, state: dict[str, Any], request: dict[str, Any]
) -> NoReturn:
    """running → waiting_approval, once, for a call inside the attempt that waits for a
    person's approval: `state` (what resuming needs, secrets redacted) is saved on the step and
    `request` is the `approval.requested` payload; then plan the run (it waits for approval
    once nothing else is in flight). Always raises: StepPaused, or StepSuperseded for an
    attempt that is no longer current. Approving re-queues the step (lifecycle.step_decide)."""
    with transaction.atomic():
        run = lock_run(step.run_id)
        if run is None or run.is_finished or run.cancel_requested:
            raise StepSuperseded()
        moved = RunStep.objects.filter(
            pk=step.pk, attempt=attempt, status=RunStep.Status.RUNNING
        ).update(status=RunStep.Status.WAITING_APPROVAL, state=state, heartbeat_at=None)
        if not moved:
            raise StepSuperseded()
        run_advance_locked(
            run,
            inline=True,
            events=[
                {
                    "type": RunEvent.Type.STEP_STATUS,
                    "node_id": step.node_id,
                    "attempt": attempt,
                    "payload": {"status": "waiting_approval"},
                },
                {
                    "type": RunEvent.Type.APPROVAL_REQUESTED,
                    "node_id": step.node_id,
                    "attempt": attempt,
                    "payload": request,
                },
            ],
        )
    raise StepPaused()


def step_recover(*, step_id: int, attempt: int, reason: str) -> bool:
    """A running attempt whose worker went silent: re-queue it as a new attempt (the lost worker,
    if it ever comes back, is fenced off by the attempt number). Does not count as a failure."""
    with transaction.atomic():
        step = RunStep.objects.filter(pk=step_id).values("run_id").first()
        if step is None:
            return False
        run = lock_run(step["run_id"])
        if run is None or run.is_finished:
            return False
        now = timezone.now()
        moved = RunStep.objects.filter(
            pk=step_id, attempt=attempt, status=RunStep.Status.RUNNING
        ).update(
            status=RunStep.Status.QUEUED,
            attempt=attempt + 1,
            queued_at=now,
            next_attempt_at=None,
            heartbeat_at=None,
            worker="",
        )
        if not moved:
            return False
        node_id = RunStep.objects.filter(pk=step_id).values_list("node_id", flat=True).get()
        event_append(
            run.pk,
            RunEvent.Type.STEP_STATUS,
            {"status": "queued", "recovered": True, "reason": reason},
            node_id=node_id,
            attempt=attempt,
        )
        send_step(step_id, attempt + 1)
    return True


@observability.step_scope
def step_execute(*, step_id: int, attempt: int) -> None:
    step = step_start(step_id=step_id, attempt=attempt)
    if step is None:
        return
    if step.type == "agent":
        # An agent's loop can run for minutes: policies are read afresh at each call.
        _execute(step, attempt)
        return
    with policy_hooks.cached():
        _execute(step, attempt)


def _execute(step: RunStep, attempt: int) -> None:
    node = node_of(step.run, step.node_id)
    checkpoint = Checkpoint(step, attempt, step_timeout(node), deferred_writes=step.type != "agent")
    try:
        with heartbeat.beating(step.pk, attempt), observability.step_span(step, attempt):
            try:
                output = executors.execute(step=step, node=node, checkpoint=checkpoint)
            except PauseForApproval as pause:
                step_pause(step=step, attempt=attempt, state=pause.state, request=pause.request)
    except StepPaused:  # waiting for an approval, its loop saved (step_pause)
        return
    except StepSuperseded:
        logger.info("step %s attempt %s superseded; result discarded", step.pk, attempt)
        return
    except StepError as exc:
        step_fail(
            step=step, attempt=attempt, error=redacted(exc, checkpoint), checkpoint=checkpoint
        )
        return
    except Exception as exc:  # a bug or an unexpected library error: fail clearly, don't retry
        logger.exception("step %s attempt %s crashed", step.pk, attempt)
        error = StepError("internal_error", f"{exc.__class__.__name__}: {exc}")
        step_fail(
            step=step, attempt=attempt, error=redacted(error, checkpoint), checkpoint=checkpoint
        )
        return
    step_succeed(
        step=step,
        attempt=attempt,
        output=checkpoint.secrets.redact(output),
        checkpoint=checkpoint,
    )
