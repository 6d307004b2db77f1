"""`workflow` nodes: a step that runs another workflow of the same project as a child run.

The planner sets the step running and sends `runs.child_start`; `child_start` (under the
parent run's lock) renders the input mapping and creates the child run of the workflow's
current version (pinned by the run), linked by `Run.parent_step`, one level deeper
(`chain_depth`, bounded by SPARKOPS_MAX_CHAIN_DEPTH). When the child finishes,
`child_finished` writes the step's outcome (the output mapping, or the child's output; the
child's tokens and cost roll up to the step and the parent run) and plans the parent. A child
that failed or timed out is retried as a new child run (a new attempt of the step) under the
node's `retry`, with its backoff; the step's usage is every attempt's. A parent that finishes
first (cancelled, failed elsewhere, timed out) cancels its unfinished children; a cancelled
child fails its step, never retried. Both run after commit, in transactions of their own, each
locking one run at a time."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from runs.engine.context import referenced, step_states, template_context
from runs.models import Run, RunEvent, RunStep
from runs.services import run_cancel, run_create
from runs.services.dispatch import send_child_start
from runs.services.events import events_append
from runs.services.planning import run_advance_locked
from runs.services.state import (
    backoff_delay,
    lock_run,
    node_of,
    retry_policy,
    split_item_id,
    version_shape,
)
from sparkops.errors import SparkOpsError
from sparkops.templating import TemplateError, render_value
from workflows.models import Workflow

logger = logging.getLogger(__name__)


def _event(step: RunStep, status: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": RunEvent.Type.STEP_STATUS,
        "node_id": step.node_id,
        "attempt": step.attempt or None,
        "payload": {"status": status, **payload},
    }


def _render(run: Run, value: Any, extra: dict[str, Any] | None = None) -> Any:
    """No secrets: what this renders is stored as the child's input or the step's output."""
    context = template_context(run, step_states(run.pk, referenced(value)), None)
    return render_value(value, {**context, **(extra or {})})


def _iteration(run: Run, step: RunStep) -> dict[str, Any]:
    """A loop's iteration reads the previous one's output and its number; a map's item, the
    item and its position."""
    parent, index = split_item_id(step.node_id)
    if parent is None or step.item_index is None:
        return {}
    if node_of(run, parent).get("type") == "map":
        return {"item": step.item, "item_index": index}
    return {"previous": step.item, "iteration": index}


def _fail(run: Run, step: RunStep, error: dict[str, Any], **fields: Any) -> None:
    now = timezone.now()
    RunStep.objects.filter(pk=step.pk, status=RunStep.Status.RUNNING).update(
        status=RunStep.Status.FAILED, error=error, finished_at=now, **fields
    )
    run_advance_locked(run, inline=True, events=[_event(step, "failed", error=error)])


def _retried(
    run: Run, step: RunStep, node: dict[str, Any], error: dict[str, Any], usage: dict[str, Any]
) -> bool:
    """A failed child's step as a new attempt, its child started after the backoff, when the
    node's `retry` has attempts left (the run locked). False: the step fails."""
    failures = step.failures + 1
    policy = retry_policy(run, node)
    if failures >= policy["max_attempts"] or run.cancel_requested:
        return False
    delay = backoff_delay(policy, failures)
    moved = RunStep.objects.filter(
        pk=step.pk, attempt=step.attempt, status=RunStep.Status.RUNNING
    ).update(
        attempt=step.attempt + 1,
        failures=failures,
        error=error,
        input={},
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        resent_at=None,
        resends=0,
        **usage,
    )
    if not moved:
        return False
    event = _event(step, "running", retry=True, error=error, failures=failures)
    event["payload"].update(max_attempts=policy["max_attempts"], delay_seconds=round(delay, 3))
    events_append(run.pk, [event])
    send_child_start(step.pk, step.attempt + 1, countdown=delay)
    return True


def child_start(*, step_id: int, attempt: int) -> None:
    with transaction.atomic():
        row = RunStep.objects.filter(pk=step_id).values_list("run_id", flat=True).first()
        run = lock_run(row) if row is not None else None
        if run is None or run.is_finished or run.cancel_requested:
            return
        step = RunStep.objects.filter(
            pk=step_id, attempt=attempt, status=RunStep.Status.RUNNING
        ).first()
        if step is None or (step.input or {}).get("child_run"):  # a duplicate delivery
            return
        node = node_of(run, step.node_id)
        slug = str(node["workflow"])
        depth = run.chain_depth + 1
        limit = settings.SPARKOPS_MAX_CHAIN_DEPTH
        if depth > limit:
            message = (
                f"Workflow '{slug}' would run at depth {depth}, past "
                f"SPARKOPS_MAX_CHAIN_DEPTH ({limit})."
            )
            _fail(run, step, {"type": "depth_limit", "message": message})
            return
        child_workflow = Workflow.objects.filter(project_id=run.project_id, slug=slug).first()
        try:
            if child_workflow is None:
                raise SparkOpsError(f"No workflow '{slug}' in this project.")
            child_input = _render(run, node.get("input") or {}, _iteration(run, step))
            with transaction.atomic():
                child = run_create(
                    workflow=child_workflow,
                    input=child_input,
                    actor=run.created_by,
                    trigger=Run.Trigger.WORKFLOW,
                    chain_depth=depth,
                    parent_step=step,
                )
        except (TemplateError, SparkOpsError) as exc:
            message = f"Cannot start workflow '{slug}': {exc.detail}"
            errors = getattr(exc, "errors", None)
            error = {
                "type": "child_start",
                "message": message,
                **({"errors": errors} if errors else {}),
            }
            _fail(run, step, error)
            return
        step.input = {"workflow": slug, "child_run": str(child.pk), "input": child_input}
        step.save(update_fields=["input"])
        events_append(
            run.pk,
            [
                {
                    "type": RunEvent.Type.STEP_STATUS,
                    "node_id": step.node_id,
                    "attempt": step.attempt,
                    "payload": {"status": "running", "child_run": str(child.pk)},
                }
            ],
        )


def on_run_finished(sender: Any, run: Any, **kwargs: Any) -> None:
    """Engine receiver (inside its transaction): act on the other run after commit."""
    if run.parent_step_id is not None:
        transaction.on_commit(lambda: _safely(child_finished, run.pk), robust=True)
    if not version_shape(run).has_children:
        return  # nothing in its definition starts a child run
    if Run.objects.filter(parent_step__run=run).exclude(status__in=Run.FINISHED_STATUSES).exists():
        transaction.on_commit(lambda: _safely(cancel_children, run.pk), robust=True)


def _safely(work: Any, run_id: Any) -> None:
    try:
        work(run_id)
    except Exception:
        logger.exception("%s after run %s finished failed", work.__name__, run_id)


def cancel_children(run_id: Any) -> None:
    for child in Run.objects.filter(parent_step__run_id=run_id).exclude(
        status__in=Run.FINISHED_STATUSES
    ):
        with contextlib.suppress(SparkOpsError), transaction.atomic():  # finished meanwhile
            run_cancel(run=child, actor="the parent run")


def child_finished(child_id: Any) -> None:
    child = Run.objects.select_related("parent_step", "workflow").get(pk=child_id)
    step_ref = child.parent_step
    if step_ref is None:
        return
    with transaction.atomic():
        run = lock_run(step_ref.run_id)
        if run is None or run.is_finished:
            return
        step = RunStep.objects.filter(pk=step_ref.pk, status=RunStep.Status.RUNNING).first()
        if step is None:
            return
        if (step.input or {}).get("child_run") != str(child.pk):
            return  # a child of an earlier attempt (its step has moved on)
        usage: dict[str, Any] = {
            name: F(name) + value
            for name, value in (
                ("input_tokens", child.input_tokens),
                ("output_tokens", child.output_tokens),
                ("cost", child.cost),
            )
        }
        Run.objects.filter(pk=run.pk).update(**usage)
        node = node_of(run, step.node_id)
        slug = child.workflow.slug
        if child.status != Run.Status.SUCCEEDED:
            reason = (child.error or {}).get("message") or child.status
            error = {
                "type": f"child_{child.status}",
                "message": f"Child run of workflow '{slug}' {child.status}: {reason}",
                "child_run": str(child.pk),
            }
            if child.status != Run.Status.CANCELLED and _retried(run, step, node, error, usage):
                return
            _fail(run, step, error, failures=step.failures + 1, **usage)
            return
        output = child.output
        if "output" in node:
            state = {"output": child.output, "status": child.status, "id": str(child.pk)}
            try:
                output = _render(run, node["output"], {"child": state, **_iteration(run, step)})
            except (TemplateError, SparkOpsError) as exc:
                message = f"Cannot render the output mapping: {exc.detail}"
                _fail(run, step, {"type": "template_error", "message": message}, **usage)
                return
        now = timezone.now()
        RunStep.objects.filter(pk=step.pk, status=RunStep.Status.RUNNING).update(
            status=RunStep.Status.SUCCEEDED, output=output, finished_at=now, **usage
        )
        duration = int((now - (step.started_at or now)).total_seconds() * 1000)
        event = _event(step, "succeeded", duration_ms=duration, child_run=str(child.pk))
        run_advance_locked(run, inline=True, events=[event])
