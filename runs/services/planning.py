"""Planning a run: admission (concurrency limits), the ready-node loop (skip, wait for an
approval, run inline or queue each ready node), and finishing the run when nothing is left.
Call `run_advance_locked` with the run row locked."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from projects.secrets import SecretBag
from runs import observability
from runs.engine import executors, planner
from runs.engine.checkpoint import InlineCheckpoint
from runs.engine.context import referenced, step_states, template_context
from runs.engine.errors import StepError
from runs.models import Run, RunEvent, RunStep
from sparkops import logcontext, tracing
from sparkops.errors import SparkOpsError
from sparkops.nul import strip_nul
from workflows.models import Workflow
from workflows.templating import TemplateError, evaluate_condition, render_value

from . import policy_hooks
from .dispatch import send_advance, send_step
from .events import collecting as events_collecting
from .events import events_append
from .failures import oversized, record_failure, redacted
from .state import (
    WORKER_NAME,
    find_tool,
    finish_run,
    lock_run,
    node_of,
    step_timeout,
    version_snapshot,
)

logger = logging.getLogger("runs.services.engine")


def _admit(run: Run) -> bool:
    """FIFO admission for workflows with `max_concurrent_runs`. Locks the workflow row so two
    planners cannot both admit past the limit."""
    limit = (
        Workflow.objects.select_for_update()
        .filter(pk=run.workflow_id)
        .values_list("max_concurrent_runs", flat=True)
        .first()
    )
    if not limit:
        return True
    active = Run.objects.filter(
        workflow_id=run.workflow_id,
        status__in=[Run.Status.RUNNING, Run.Status.WAITING_APPROVAL],
    ).count()
    if active >= limit:
        return False
    if Run.objects.filter(
        workflow_id=run.workflow_id,
        status__in=[Run.Status.QUEUED, Run.Status.PENDING],
        created_at__lt=run.created_at,
    ).exists():
        return False
    if active + 1 < limit:
        # Room is left after this one: a younger run that queued while this one was still
        # pending (and so was refused above) is planned again; it admits itself or not.
        following = (
            Run.objects.filter(
                workflow_id=run.workflow_id,
                status=Run.Status.QUEUED,
                created_at__gt=run.created_at,
            )
            .order_by("created_at")
            .values_list("pk", flat=True)
            .first()
        )
        if following:
            send_advance(following)
    return True


def run_enqueue(*, run_id: Any) -> None:
    """pending → queued (the first task of a run, sent after its creation commits), then plan."""
    with transaction.atomic():
        moved = Run.objects.filter(pk=run_id, status=Run.Status.PENDING).update(
            status=Run.Status.QUEUED, queued_at=timezone.now()
        )
        if moved:
            events_append(
                run_id, [{"type": RunEvent.Type.RUN_STATUS, "payload": {"status": "queued"}}]
            )
    run_advance(run_id=run_id)


def run_advance(*, run_id: Any) -> None:
    # The scope ends after the commit: the steps it sends carry the trace context of the
    # inline step that made them ready, and nothing of it stays on the worker thread.
    with tracing.context_scope(), transaction.atomic():
        run = lock_run(run_id)
        if run is not None:
            run_advance_locked(run, inline=True)


@observability.run_scope
def run_advance_locked(
    run: Run, *, inline: bool = False, events: list[dict[str, Any]] | None = None
) -> None:
    """Plan the run once: admit it, skip what must be skipped, queue what is ready, and finish
    it when nothing is left. Call with the run row locked (inside a transaction).

    With `inline` (workers only, never a web request), ready steps that are local and free of
    side effects (transforms, builtin tools) run right here, in this transaction, instead of
    taking a broker hop each: like Temporal's local activities. Up to
    SPARKOPS_INLINE_STEPS of them per call; the rest wait for the next planning, sent at once.

    `events` (the caller's, such as the step completion that led here) are written first, in
    the same statement as the planner's."""
    with policy_hooks.cached() if inline else contextlib.nullcontext():
        _advance(run, inline=inline, events=list(events or []))


def _advance(run: Run, *, inline: bool, events: list[dict[str, Any]]) -> None:
    if run.is_finished or run.cancel_requested or not _start(run, events):
        events_append(run.pk, events)
        return
    planning = _Planning(run, inline=inline, events=events)
    planning.settle(planning.run_until_stable())


def _start(run: Run, events: list[dict[str, Any]]) -> bool:
    """A pending or queued run is admitted (its concurrency limit allowing) and set running
    with its deadline; False while it must keep waiting."""
    if run.status not in (Run.Status.PENDING, Run.Status.QUEUED):
        return True
    if not _admit(run):
        return False
    now = timezone.now()
    snapshot = version_snapshot(run)
    run.status = Run.Status.RUNNING
    run.started_at = run.started_at or now
    run.queued_at = run.queued_at or now
    run.deadline = now + timedelta(seconds=int(snapshot.get("timeout_seconds") or 3600))
    run.save(update_fields=["status", "started_at", "queued_at", "deadline"])
    events.append({"type": RunEvent.Type.RUN_STATUS, "payload": {"status": "running"}})
    return True


class _Planning:
    """One planning of a running run (its row locked): skip, wait, run inline or queue each
    node the planner finds ready, again until nothing changes (`run_until_stable`); then
    `settle` finishes the run or moves it between running and waiting_approval, writes the
    events and sends the queued steps."""

    def __init__(self, run: Run, *, inline: bool, events: list[dict[str, Any]]) -> None:
        self.run = run
        self.events = events
        self.now = timezone.now()
        self.definition = version_snapshot(run)["definition"]
        self.nodes = planner.nodes_of(self.definition)
        self.by_id = {node.id: node for node in self.nodes}
        self.raw_nodes = {node["id"]: node for node in self.definition["nodes"]}
        # Light rows for planning; outputs are loaded only for the steps a template reads.
        self.steps = {
            row[1]: _StepRow(*row)
            for row in RunStep.objects.filter(run=run).values_list(
                "id", "node_id", "type", "status", "attempt"
            )
        }
        self.secrets = SecretBag(run.project_id)
        self.tools: dict[str, Any] = {}
        self.to_send: list[tuple[int, int]] = []
        self.inline_left = settings.SPARKOPS_INLINE_STEPS if inline else 0
        self.inline = self.inline_left > 0
        self.deferred = False  # local steps past the inline limit: plan again after commit
        self.changed = False

    def context_for(self, value: Any, *, condition: bool = False) -> dict[str, Any]:
        wanted = referenced(value, condition=condition)
        return template_context(self.run, step_states(self.run.pk, wanted), self.secrets)

    def set_status(self, step: _StepRow, status: str, **fields: Any) -> bool:
        moved = RunStep.objects.filter(pk=step.pk, status=step.status).update(
            status=status, **fields
        )
        if moved:
            step.status = status
            for name, value in fields.items():
                setattr(step, name, value)
            self.changed = True
        return bool(moved)

    def plan(self) -> planner.Plan:
        return planner.plan(self.nodes, {n: s.status for n, s in self.steps.items()})

    def run_until_stable(self) -> planner.Plan:
        result = self.plan()
        self.changed = True
        while self.changed and not result.fatal:
            self.changed = False
            for node_id in result.skip:
                step = self.steps[node_id]
                if self.set_status(step, RunStep.Status.SKIPPED, finished_at=self.now):
                    reason = "every upstream step was skipped"
                    self.events.append(_step_event(step, "skipped", reason=reason))
            ready = [step for node_id in result.ready if (step := self._consider(node_id))]
            if ready:
                self._queue(ready)
            result = self.plan()
        return result

    def _consider(self, node_id: str) -> _StepRow | None:
        """Settle a ready node where it stands (skipped or failed by its `when`, parked for an
        approval, run inline, deferred) and return its step only when it is to be queued."""
        node, step = self.by_id[node_id], self.steps[node_id]
        if node.when and not self._when_holds(node.when, step):
            return None
        if node.type == "approval":
            self._request_approval(node_id, step)
            return None
        if node.type == "tool" and _tool_needs_approval(
            self.run, node_id, step, self.events, self.set_status
        ):
            self.changed = True
            return None
        raw = self.raw_nodes[node_id]
        if not (self.inline and _is_local(self.run, raw, self.tools)):
            return step
        if self.inline_left <= 0:
            self.deferred = True
            return None
        self.inline_left -= 1
        _execute_inline(self.run, step, raw, self.secrets, self.tools, self.events)
        self.changed = True
        return None

    def _when_holds(self, when: str, step: _StepRow) -> bool:
        """Whether the node's `when` holds; when it does not (or cannot be evaluated) the step
        is skipped (or failed) here."""
        try:
            go = evaluate_condition(when, self.context_for(when, condition=True))
        except (TemplateError, SparkOpsError) as exc:
            error = {"type": "when_error", "message": str(exc.detail)}
            if self.set_status(step, RunStep.Status.FAILED, error=error, finished_at=self.now):
                self.events.append(_step_event(step, "failed", error=error))
            return False
        if not go and self.set_status(step, RunStep.Status.SKIPPED, finished_at=self.now):
            self.events.append(_step_event(step, "skipped", reason="`when` is false"))
        return bool(go)

    def _request_approval(self, node_id: str, step: _StepRow) -> None:
        raw = node_of(self.run, node_id).get("message") or "Approve to continue."
        try:
            message = render_value(raw, self.context_for(raw))
        except (TemplateError, SparkOpsError):
            message = raw
        message = self.secrets.redact(message)
        if self.set_status(step, RunStep.Status.WAITING_APPROVAL, input={"message": message}):
            self.events.append(_step_event(step, "waiting_approval"))
            self.events.append(
                {
                    "type": RunEvent.Type.APPROVAL_REQUESTED,
                    "node_id": node_id,
                    "payload": {"message": message},
                }
            )

    def _queue(self, ready: list[_StepRow]) -> None:
        # One UPDATE for every ready step (a 500-node fan-out queues in one statement).
        # Pending steps change only under the run lock we hold, so all of them move.
        RunStep.objects.filter(
            pk__in=[step.pk for step in ready], status=RunStep.Status.PENDING
        ).update(status=RunStep.Status.QUEUED, attempt=F("attempt") + 1, queued_at=self.now)
        for step in ready:
            step.status = RunStep.Status.QUEUED
            step.attempt += 1
            self.events.append(_step_event(step, "queued"))
            self.to_send.append((step.pk, step.attempt))
        self.changed = True

    def settle(self, result: planner.Plan) -> None:
        if result.fatal:
            self._fail(result.fatal[0])
        elif result.run_status == planner.SUCCEEDED:
            self._succeed()
        else:
            self._carry_on(result.run_status)

    def _fail(self, failed: str) -> None:
        step_error = RunStep.objects.filter(run=self.run, node_id=failed).values_list(
            "error", flat=True
        )[0]
        error = {
            "type": "step_failed",
            "message": f"Step '{failed}' failed: {(step_error or {}).get('message', '')}",
            "step": failed,
            "step_error": step_error,
        }
        events_append(self.run.pk, self.events)
        finish_run(self.run, Run.Status.FAILED, error=error)

    def _succeed(self) -> None:
        events_append(self.run.pk, self.events)
        template = self.definition.get("output")
        try:
            output = render_value(template, self.context_for(template))
        except (TemplateError, SparkOpsError) as exc:
            error = {"type": "output_error", "message": str(exc.detail)}
            finish_run(self.run, Run.Status.FAILED, error=error)
            return
        if output is None:
            output = {
                node_id: state["output"]
                for node_id, state in step_states(self.run.pk).items()
                if state["status"] == RunStep.Status.SUCCEEDED
            }
        finish_run(self.run, Run.Status.SUCCEEDED, output=self.secrets.redact(output))

    def _carry_on(self, run_status: str) -> None:
        run = self.run
        wanted = (
            Run.Status.WAITING_APPROVAL
            if run_status == planner.WAITING_APPROVAL
            else Run.Status.RUNNING
        )
        if run.status != wanted:
            run.status = wanted
            run.save(update_fields=["status"])
            self.events.append({"type": RunEvent.Type.RUN_STATUS, "payload": {"status": wanted}})
        events_append(run.pk, self.events)
        for step_id, attempt in self.to_send:
            send_step(step_id, attempt)
        if self.deferred:
            send_advance(run.pk)


def _tool_needs_approval(run: Run, node_id: str, step: Any, events: list, set_status: Any) -> bool:
    """An enforced `tool_requires_approval` policy naming this node's tool parks the step in
    `waiting_approval` before it is queued; approving it queues it (runs.services.step_decide)."""
    tool_name = str(node_of(run, node_id).get("tool"))
    reason = policy_hooks.tool_needs_approval(run=run, node_id=node_id, tool_name=tool_name)
    if not reason:
        return False
    message = {"message": reason, "policy": True}
    if set_status(step, RunStep.Status.WAITING_APPROVAL, input=message):
        events.append(_step_event(step, "waiting_approval"))
        events.append(
            {"type": RunEvent.Type.APPROVAL_REQUESTED, "node_id": node_id, "payload": message}
        )
    return True


def _is_local(run: Run, node: dict[str, Any], tools: dict[str, Any]) -> bool:
    """A step the planner may run inline: a transform, or a call of a builtin tool (pure
    functions of their arguments: no network, no waiting)."""
    if node["type"] == "transform":
        return True
    if node["type"] != "tool":
        return False
    tool = find_tool(run.project_id, str(node.get("tool")), tools)
    return tool is not None and tool.kind == "builtin"


def _execute_inline(
    run: Run,
    step: _StepRow,
    node: dict[str, Any],
    secrets: SecretBag,
    tools: dict[str, Any],
    events: list[dict[str, Any]],
) -> None:
    """Run one local step in the planner's transaction, as one attempt with the same events,
    policy checks, redaction, size cap and retry rules as a step run by a worker; its row is
    written once, with the outcome. The step's own writes sit in a savepoint, so an unexpected
    error (a bug, a database error) fails only the step."""
    now = timezone.now()
    attempt = step.attempt + 1
    model = RunStep(
        pk=step.pk,
        run=run,
        node_id=step.node_id,
        type=step.type,
        status=RunStep.Status.RUNNING,
        attempt=attempt,
        queued_at=now,
        started_at=now,
    )
    checkpoint = InlineCheckpoint(model, attempt, step_timeout(node), secrets, tools)
    step.attempt = attempt
    events.append(_step_event(step, "queued", inline=True))
    events.append(_step_event(step, "running", worker=WORKER_NAME))
    mark = len(events)
    error: StepError | None = None
    output: Any = None
    savepoint = transaction.savepoint()
    try:
        with (
            logcontext.scope(step_id=step.pk, attempt=attempt),
            events_collecting(run.pk, events),
            observability.step_span(model, attempt),
        ):
            output = secrets.redact(executors.execute(step=model, node=node, checkpoint=checkpoint))
            error = oversized(output)
        events.extend(checkpoint.events)
    except StepError as exc:  # an outcome: keep what the step wrote (its policy decisions)
        transaction.savepoint_commit(savepoint)
        error = redacted(exc, checkpoint)
        events.extend(checkpoint.events)
    except Exception as exc:  # a bug or a database error: undo the step's writes, fail it
        transaction.savepoint_rollback(savepoint)
        del events[mark:]
        logger.exception("step %s attempt %s crashed (inline)", step.pk, attempt)
        error = redacted(
            StepError("internal_error", f"{exc.__class__.__name__}: {exc}"), checkpoint
        )
    else:
        transaction.savepoint_commit(savepoint)
    finished = timezone.now()
    rows = RunStep.objects.filter(pk=step.pk, status=RunStep.Status.PENDING)
    written = {
        "queued_at": now,
        "started_at": now,
        "worker": WORKER_NAME,
        "input": checkpoint.input,
    }
    if error is None:
        rows.update(
            status=RunStep.Status.SUCCEEDED,
            output=strip_nul(output),
            error=None,
            finished_at=finished,
            attempt=attempt,
            **written,
        )
        step.status = RunStep.Status.SUCCEEDED
        duration = int((finished - now).total_seconds() * 1000)
        events.append(_step_event(step, "succeeded", duration_ms=duration))
        return
    step.status = record_failure(
        run,
        rows,
        step_id=step.pk,
        node_id=step.node_id,
        attempt=attempt,
        failures=1,
        error=error,
        events=events,
        **written,
    )
    if step.status == RunStep.Status.QUEUED:
        step.attempt += 1


@dataclass
class _StepRow:
    """What planning needs of a step (no JSON columns: a 500-node run plans in one light read)."""

    pk: int
    node_id: str
    type: str
    status: str
    attempt: int


def _step_event(step: Any, status: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": RunEvent.Type.STEP_STATUS,
        "node_id": step.node_id,
        "attempt": step.attempt or None,
        "payload": {"status": status, **payload},
    }
