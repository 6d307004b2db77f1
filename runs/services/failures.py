"""A failed attempt's outcome: retried with backoff or failed, an output over the size cap,
and errors with the step's secrets redacted. Shared by the inline and the queued paths."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from runs.engine.checkpoint import Checkpoint
from runs.engine.errors import StepError
from runs.models import Run, RunEvent, RunStep
from sparkops.nul import strip_nul

from .dispatch import send_step
from .state import backoff_delay, node_of, retry_policy


def oversized(output: Any) -> StepError | None:
    """The error for a step output over SPARKOPS_MAX_OUTPUT_BYTES (never retried), or None."""
    size = len(json.dumps(output, default=str))
    if size <= settings.SPARKOPS_MAX_OUTPUT_BYTES:
        return None
    return StepError(
        "output_too_large",
        f"The step output is {size} bytes; the limit is "
        f"{settings.SPARKOPS_MAX_OUTPUT_BYTES} (SPARKOPS_MAX_OUTPUT_BYTES).",
    )


def record_failure(
    run: Run,
    rows: Any,
    *,
    step_id: int,
    node_id: str,
    attempt: int,
    failures: int,
    error: StepError,
    events: list[dict[str, Any]],
    **fields: Any,
) -> str:
    """Write a failed attempt to `rows` (the step's row, filtered on its expected state), with
    `fields` besides: queued again with backoff when the error is retryable and attempts remain,
    else failed. Appends the step's event to `events`; returns the new status. Call with the
    run locked."""
    now = timezone.now()
    policy = retry_policy(run, node_of(run, node_id), error)
    error_dict = strip_nul(error.as_dict())
    if error.retryable and failures < policy["max_attempts"] and not run.cancel_requested:
        delay = backoff_delay(policy, failures, error.details.get("retry_after"))
        fields.pop("queued_at", None)  # queued again now: the sweeper's lost-message clock
        rows.update(
            status=RunStep.Status.QUEUED,
            attempt=attempt + 1,
            failures=failures,
            error=error_dict,
            queued_at=now,
            next_attempt_at=now + timedelta(seconds=delay),
            heartbeat_at=None,
            **fields,
        )
        events.append(
            {
                "type": RunEvent.Type.STEP_STATUS,
                "node_id": node_id,
                "attempt": attempt,
                "payload": {
                    "status": "queued",
                    "retry": True,
                    "error": error_dict,
                    "failures": failures,
                    "max_attempts": policy["max_attempts"],
                    "delay_seconds": round(delay, 3),
                },
            }
        )
        # Short waits ride a countdown; long ones wait in the database for the sweeper
        # (an ETA longer than Redis' visibility timeout would be delivered twice).
        if delay <= settings.SPARKOPS_RETRY_COUNTDOWN_MAX:
            send_step(step_id, attempt + 1, countdown=delay)
        return RunStep.Status.QUEUED
    rows.update(
        status=RunStep.Status.FAILED,
        attempt=attempt,
        failures=failures,
        error=error_dict,
        finished_at=now,
        state=None,
        **fields,
    )
    events.append(
        {
            "type": RunEvent.Type.STEP_STATUS,
            "node_id": node_id,
            "attempt": attempt,
            "payload": {"status": "failed", "error": error_dict, "failures": failures},
        }
    )
    return RunStep.Status.FAILED


def redacted(error: StepError, checkpoint: Checkpoint) -> StepError:
    error.message = checkpoint.secrets.redact(error.message)
    error.details = checkpoint.secrets.redact(error.details)
    return error
