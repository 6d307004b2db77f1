"""Step and run state transitions. Every write here is guarded: a conditional UPDATE on the
expected status (and, for steps, the expected `attempt`, a fencing token) or a row lock, so two
workers can never both start, finish or fail the same step, and a stale or duplicate delivery
is a no-op. Lock order, to stay deadlock-free: the run row first, then its step rows."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, NoReturn

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from projects.secrets import SecretBag
from runs.models import Run, RunEvent, RunStep
from sparkops.nul import strip_nul

from .dispatch import send_step
from .events import event_append, events_append

logger = logging.getLogger(__name__)
WORKER_NAME = f"{socket.gethostname()}:{threading.get_native_id()}"


class StepError(Exception):
    """A step attempt failed. `retryable` decides whether the retry policy applies."""

    def __init__(self, type: str, message: str, *, retryable: bool = False, **details: Any) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.retryable = retryable
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "retryable": self.retryable,
            **self.details,
        }


class StepSuperseded(Exception):
    """The attempt is no longer current (cancelled, timed out, recovered elsewhere): stop and
    write nothing."""


class StepPaused(Exception):
    """The attempt parked its step in `waiting_approval` (`step_pause`) and wrote all there is
    to write: stop, and release the worker."""


def lock_run(run_id: Any) -> Run | None:
    return Run.objects.select_for_update().filter(pk=run_id).first()


@lru_cache(maxsize=256)
def _snapshot(version_id: int) -> dict[str, Any]:
    from workflows.models import WorkflowVersion

    return WorkflowVersion.objects.values_list("snapshot", flat=True).get(pk=version_id)


def version_snapshot(run: Run) -> dict[str, Any]:
    """The pinned version's snapshot. Versions are immutable and their ids never reused
    (PostgreSQL sequences; SQLite AUTOINCREMENT), so each process reads and parses one once
    instead of per step. Treat the result as read-only."""
    return _snapshot(run.version_id)


def node_of(run: Run, node_id: str) -> dict[str, Any]:
    for node in version_snapshot(run)["definition"]["nodes"]:
        if node["id"] == node_id:
            return node
    raise KeyError(node_id)


def retry_policy(run: Run, node: dict[str, Any]) -> dict[str, Any]:
    policy = dict(version_snapshot(run).get("retry_policy") or {})
    policy.update(node.get("retry") or {})
    return {
        "max_attempts": int(policy.get("max_attempts", 1)),
        "backoff_seconds": float(policy.get("backoff_seconds", 2)),
        "max_backoff_seconds": float(policy.get("max_backoff_seconds", 300)),
    }


def backoff_delay(policy: dict[str, Any], failures: int) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a factor in [0.5, 1]."""
    base = policy["backoff_seconds"] * (2 ** max(failures - 1, 0))
    return min(base, policy["max_backoff_seconds"]) * random.uniform(0.5, 1.0)  # noqa: S311


def step_timeout(node: dict[str, Any]) -> float:
    return float(node.get("timeout_seconds") or settings.SPARKOPS_STEP_TIMEOUT)


# --- run lifecycle inside the lock --------------------------------------------------------------


def finish_run(
    run: Run,
    status: str,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> None:
    """Call with the run row locked. Cancels every unfinished step (a running one stops at its
    next checkpoint and its result is discarded) and records the outcome."""
    now = timezone.now()
    events = list(events or [])
    unfinished = list(
        RunStep.objects.filter(run=run)
        .exclude(status__in=RunStep.FINISHED_STATUSES)
        .values_list("node_id", "status")
    )
    if unfinished:
        RunStep.objects.filter(run=run).exclude(status__in=RunStep.FINISHED_STATUSES).update(
            status=RunStep.Status.CANCELLED, finished_at=now, state=None
        )
        events += [
            {
                "type": RunEvent.Type.STEP_STATUS,
                "node_id": node_id,
                "payload": {"status": "cancelled", "from": previous},
            }
            for node_id, previous in unfinished
        ]
    started = run.started_at or run.created_at
    run.status = status
    run.output = strip_nul(output)
    run.error = strip_nul(error)
    run.finished_at = now
    run.duration_ms = int((now - started).total_seconds() * 1000)
    run.save(update_fields=["status", "output", "error", "finished_at", "duration_ms"])
    events.append(
        {
            "type": RunEvent.Type.RUN_STATUS,
            "payload": {"status": status, **({"error": error} if error else {})},
        }
    )
    events_append(run.pk, events)
    from . import hooks

    hooks.run_finished(run)


# --- steps ----------------------------------------------------------------------------------


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
    from .engine import run_advance_locked

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


def oversized(output: Any) -> StepError | None:
    """The error for a step output over SPARKOPS_MAX_OUTPUT_BYTES (never retried), or None."""
    import json

    size = len(json.dumps(output, default=str))
    if size <= settings.SPARKOPS_MAX_OUTPUT_BYTES:
        return None
    return StepError(
        "output_too_large",
        f"The step output is {size} bytes; the limit is "
        f"{settings.SPARKOPS_MAX_OUTPUT_BYTES} (SPARKOPS_MAX_OUTPUT_BYTES).",
    )


def has_successors(run: Run, node_id: str) -> bool:
    return any(
        node_id in (node.get("depends_on") or ())
        for node in version_snapshot(run)["definition"]["nodes"]
    )


def step_fail(
    *, step: RunStep, attempt: int, error: StepError, checkpoint: Checkpoint | None = None
) -> bool:
    """A failed attempt: re-queue with backoff if the error is retryable and attempts remain,
    else running → failed and plan the run (which fails it unless continue_on_failure). What
    the checkpoint deferred (input, call events) is written with it."""
    from .engine import run_advance_locked

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
    policy = retry_policy(run, node_of(run, node_id))
    error_dict = strip_nul(error.as_dict())
    if error.retryable and failures < policy["max_attempts"] and not run.cancel_requested:
        delay = backoff_delay(policy, failures)
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


def step_pause(
    *, step: RunStep, attempt: int, state: dict[str, Any], request: dict[str, Any]
) -> NoReturn:
    """running → waiting_approval, once, for a call inside the attempt that waits for a
    person's approval: `state` (what resuming needs, secrets redacted) is saved on the step and
    `request` is the `approval.requested` payload; then plan the run (it waits for approval
    once nothing else is in flight). Always raises: StepPaused, or StepSuperseded for an
    attempt that is no longer current. Approving re-queues the step (lifecycle.step_decide)."""
    from .engine import run_advance_locked

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


def usage_record(
    *,
    step: RunStep,
    attempt: int,
    input_tokens: int,
    output_tokens: int,
    cost: Decimal,
    event: dict[str, Any],
) -> None:
    """Charge one model call to the step and the run and log it, exactly once: the charge is
    gated by the attempt fence, so a superseded attempt charges nothing and stops."""
    with transaction.atomic():
        run = lock_run(step.run_id)
        if run is None:
            raise StepSuperseded()
        moved = RunStep.objects.filter(
            pk=step.pk, attempt=attempt, status=RunStep.Status.RUNNING
        ).update(
            input_tokens=F("input_tokens") + input_tokens,
            output_tokens=F("output_tokens") + output_tokens,
            cost=F("cost") + cost,
            heartbeat_at=timezone.now(),
        )
        if not moved:
            raise StepSuperseded()
        Run.objects.filter(pk=run.pk).update(
            input_tokens=F("input_tokens") + input_tokens,
            output_tokens=F("output_tokens") + output_tokens,
            cost=F("cost") + cost,
        )
        events_append(run.pk, [{**event, "node_id": step.node_id, "attempt": attempt}])
        from . import hooks

        hooks.usage_charged(
            run=run,
            step=step,
            cost=cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )


def step_event(*, step: RunStep, attempt: int, type: str, payload: dict[str, Any]) -> None:
    event_append(step.run_id, type, payload, node_id=step.node_id, attempt=attempt)


class Checkpoint:
    """Called between model and tool calls: stops a step that was cancelled, superseded or is
    past its timeout, and refreshes its heartbeat. Executors also record the step's rendered
    input and its call events through it: written at once for an agent step (its loop can be
    long, and watched live), or with the step's result, in the transaction that records it,
    for a tool or transform step (`deferred_writes`: one commit instead of three)."""

    # A check this soon after the last one (the step has just started, or just checked) adds
    # nothing: skip the round trip. Long calls (models, HTTP) always check after returning.
    FRESH_SECONDS = 0.05

    def __init__(
        self, step: RunStep, attempt: int, timeout: float, *, deferred_writes: bool = False
    ) -> None:
        self.step = step
        self.attempt = attempt
        self.deadline = timezone.now() + timedelta(seconds=timeout)
        self.secrets = SecretBag(step.run.project_id)
        self.deferred_writes = deferred_writes
        self.input: Any = None
        self.has_input = False
        self.events: list[dict[str, Any]] = []
        self._verified = time.monotonic()

    def remaining(self) -> float:
        return max((self.deadline - timezone.now()).total_seconds(), 0.0)

    def __call__(self) -> None:
        if time.monotonic() - self._verified >= self.FRESH_SECONDS:
            moved = RunStep.objects.filter(
                pk=self.step.pk,
                attempt=self.attempt,
                status=RunStep.Status.RUNNING,
                run__cancel_requested=False,
            ).update(heartbeat_at=timezone.now())
            if not moved:
                raise StepSuperseded()
            self._verified = time.monotonic()
        self._check_timeout()

    def _check_timeout(self) -> None:
        if self.remaining() <= 0:
            raise StepError("timeout", "The step ran past its timeout.", retryable=True)

    def record_input(self, value: Any) -> None:
        value = strip_nul(self.secrets.redact(value))
        if self.deferred_writes:
            self.input, self.has_input = value, True
            return
        RunStep.objects.filter(pk=self.step.pk, attempt=self.attempt).update(input=value)

    def event(self, type: str, payload: dict[str, Any]) -> None:
        if self.deferred_writes:
            self.events.append(
                {
                    "type": type,
                    "payload": payload,
                    "node_id": self.step.node_id,
                    "attempt": self.attempt,
                }
            )
            return
        step_event(step=self.step, attempt=self.attempt, type=type, payload=payload)

    def deferred(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The step fields and events kept for the write of the step's result."""
        return ({"input": self.input} if self.has_input else {}), self.events

    def tool_named(self, name: str) -> Any:
        return find_tool(self.step.run.project_id, name)


class InlineCheckpoint(Checkpoint):
    """For a step the planner runs inline (runs.services.engine): the run row is locked and
    nothing of the attempt is committed yet, so no worker can supersede it and a cancel waits
    for the lock; only the timeout is checked. Writes are deferred, and the planner's secrets
    and tool lookups are shared by every step it runs."""

    def __init__(
        self, step: RunStep, attempt: int, timeout: float, secrets: SecretBag, tools: dict
    ) -> None:
        super().__init__(step, attempt, timeout, deferred_writes=True)
        self.secrets = secrets
        self.tools = tools

    def __call__(self) -> None:
        self._check_timeout()

    def tool_named(self, name: str) -> Any:
        return find_tool(self.step.run.project_id, name, self.tools)


def find_tool(project_id: Any, name: str, cache: dict[str, Any] | None = None) -> Any:
    """The tool a node or a model names, as the project sees it (its own or a global one);
    None when there is none. With `cache`, each name is read once."""
    from tools.models import Tool

    if cache is not None and name in cache:
        return cache[name]
    tool = Tool.objects.usable_in(project_id).filter(name=name).first()
    if cache is not None:
        cache[name] = tool
    return tool
