"""The checkpoint an executor calls between model and tool calls (cancel, supersede, timeout,
heartbeat), and through which it records the step's input and call events."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from projects.secrets import SecretBag
from runs.models import RunStep
from runs.services.state import find_tool, step_event
from sparkops.db import reconnecting
from sparkops.nul import strip_nul

from .errors import StepError, StepSuperseded


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
        # The step's own timeout, capped at the run's deadline: every model and HTTP call of
        # the step waits at most `remaining()`, so none outlives the run.
        own = timezone.now() + timedelta(seconds=timeout)
        run_deadline = step.run.deadline
        self.run_bound = run_deadline is not None and run_deadline < own
        self.deadline: datetime = (
            run_deadline if run_deadline is not None and self.run_bound else own
        )
        self.secrets = SecretBag(step.run.project_id)
        self.deferred_writes = deferred_writes
        self.input: Any = None
        self.has_input = False
        self.events: list[dict[str, Any]] = []
        # Model and tool calls begun: until the first, the attempt has only read (and
        # deferred its writes), so it may start over on a fresh connection.
        self.calls = 0
        self._verified = time.monotonic()

    def remaining(self) -> float:
        return max((self.deadline - timezone.now()).total_seconds(), 0.0)

    def __call__(self) -> None:
        if time.monotonic() - self._verified >= self.FRESH_SECONDS:
            # Often the first query after a model or HTTP wait: a connection the server
            # dropped meanwhile is replaced (the update is fenced: trying it again is harmless).
            if not reconnecting(self._beat):
                raise StepSuperseded()
            self._verified = time.monotonic()
        self._check_timeout()

    def _beat(self) -> bool:
        """Heartbeat, fenced: whether the attempt still runs and its run is not cancelled.
        Written as SQL once: the ORM's UPDATE with a join costs more CPU than the database
        spends on it, and it runs before most tool calls of a busy worker."""
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE runs_runstep SET heartbeat_at = %s WHERE id = %s AND attempt = %s "
                "AND status = %s AND run_id IN "
                "(SELECT id FROM runs_run WHERE id = runs_runstep.run_id AND NOT cancel_requested)",
                [timezone.now(), self.step.pk, self.attempt, RunStep.Status.RUNNING],
            )
            return bool(cursor.rowcount)

    def _check_timeout(self) -> None:
        if self.remaining() > 0:
            return
        if self.run_bound:  # not retried: the run times out (runs.services.attempts)
            raise StepError("run_timed_out", "The run passed its deadline (timeout_seconds).")
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
        return find_tool(self.step.run.project_id, name, as_of=self.step.run.created_at)


class InlineCheckpoint(Checkpoint):
    """For a step the planner runs inline (runs.services.planning): the run row is locked and
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
        run = self.step.run
        return find_tool(run.project_id, name, self.tools, as_of=run.created_at)
