"""The run engine's orchestration: plan a run (`run_advance`), execute one step attempt
(`step_execute`), and recover whatever was lost (`sweep`). Celery tasks are thin shells around
these; tests call them directly too."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from projects.secrets import SecretBag
from runs import observability
from runs.engine import planner
from runs.models import Run, RunEvent, RunStep
from sparkops import logcontext, tracing
from sparkops.errors import SparkOpsError
from workflows.models import Workflow
from workflows.templating import (
    TemplateError,
    evaluate_condition,
    referenced_steps,
    render_value,
)

from .dispatch import send_advance, send_step
from .events import collecting as events_collecting
from .events import events_append
from .steps import (
    WORKER_NAME,
    Checkpoint,
    InlineCheckpoint,
    StepError,
    StepPaused,
    StepSuperseded,
    find_tool,
    finish_run,
    lock_run,
    node_of,
    oversized,
    record_failure,
    step_fail,
    step_recover,
    step_start,
    step_succeed,
    step_timeout,
    version_snapshot,
)

logger = logging.getLogger(__name__)


def template_context(run: Run, steps: dict[str, Any], secrets: SecretBag | None) -> dict[str, Any]:
    """What templates see: input, steps (output, status and error of each), run, secrets.
    `steps` maps node ids to RunStep rows or to dicts with those keys."""

    def state(step: Any) -> dict[str, Any]:
        if isinstance(step, dict):
            return step
        return {"output": step.output, "status": step.status, "error": step.error}

    return {
        "input": run.input,
        "steps": {node_id: state(step) for node_id, step in steps.items()},
        "run": {"id": str(run.pk), "workflow": str(run.workflow_id), "trigger": run.trigger},
        "secrets": secrets if secrets is not None else {},
    }


def step_states(run_id: Any, node_ids: Any = None) -> dict[str, dict[str, Any]]:
    """Output, status and error of the given steps (all when None), in one query. Templates
    name the steps they read, so a step of a 500-node run loads what it needs, not 500 rows."""
    rows = RunStep.objects.filter(run_id=run_id)
    if node_ids is not None:
        node_ids = list(node_ids)
        if not node_ids:
            return {}
        rows = rows.filter(node_id__in=node_ids)
    return {
        row["node_id"]: {"output": row["output"], "status": row["status"], "error": row["error"]}
        for row in rows.values("node_id", "output", "status", "error")
    }


def referenced(value: Any, *, condition: bool = False) -> set[str]:
    return set(referenced_steps(value, condition=condition)) if value is not None else set()


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
    from . import policy_hooks

    with policy_hooks.cached() if inline else contextlib.nullcontext():
        _advance(run, inline=inline, events=list(events or []))


def _advance(run: Run, *, inline: bool, events: list[dict[str, Any]]) -> None:
    if run.is_finished or run.cancel_requested:
        events_append(run.pk, events)
        return
    now = timezone.now()
    if run.status in (Run.Status.PENDING, Run.Status.QUEUED):
        if not _admit(run):
            events_append(run.pk, events)
            return
        snapshot = version_snapshot(run)
        run.status = Run.Status.RUNNING
        run.started_at = run.started_at or now
        run.queued_at = run.queued_at or now
        run.deadline = now + timedelta(seconds=int(snapshot.get("timeout_seconds") or 3600))
        run.save(update_fields=["status", "started_at", "queued_at", "deadline"])
        events.append({"type": RunEvent.Type.RUN_STATUS, "payload": {"status": "running"}})

    definition = version_snapshot(run)["definition"]
    nodes = planner.nodes_of(definition)
    by_id = {node.id: node for node in nodes}
    # Light rows for planning; outputs are loaded only for the steps a template reads.
    steps = {
        row[1]: _StepRow(*row)
        for row in RunStep.objects.filter(run=run).values_list(
            "id", "node_id", "type", "status", "attempt"
        )
    }
    secrets = SecretBag(run.project_id)
    to_send: list[tuple[int, int]] = []
    raw_nodes = {node["id"]: node for node in definition["nodes"]}
    inline_left = settings.SPARKOPS_INLINE_STEPS if inline else 0
    inline = inline_left > 0
    tools: dict[str, Any] = {}
    deferred = False

    def context_for(value: Any, *, condition: bool = False) -> dict[str, Any]:
        return template_context(
            run, step_states(run.pk, referenced(value, condition=condition)), secrets
        )

    def set_status(step: _StepRow, status: str, **fields: Any) -> bool:
        moved = RunStep.objects.filter(pk=step.pk, status=step.status).update(
            status=status, **fields
        )
        if moved:
            step.status = status
            for name, value in fields.items():
                setattr(step, name, value)
        return bool(moved)

    changed = True
    result = planner.plan(nodes, {n: s.status for n, s in steps.items()})
    while changed and not result.fatal:
        changed = False
        ready: list[_StepRow] = []
        for node_id in result.skip:
            step = steps[node_id]
            if set_status(step, RunStep.Status.SKIPPED, finished_at=now):
                events.append(
                    _step_event(step, "skipped", reason="every upstream step was skipped")
                )
                changed = True
        for node_id in result.ready:
            node, step = by_id[node_id], steps[node_id]
            if node.when:
                try:
                    go = evaluate_condition(node.when, context_for(node.when, condition=True))
                except (TemplateError, SparkOpsError) as exc:
                    error = {"type": "when_error", "message": str(exc.detail)}
                    if set_status(step, RunStep.Status.FAILED, error=error, finished_at=now):
                        events.append(_step_event(step, "failed", error=error))
                        changed = True
                    continue
                if not go:
                    if set_status(step, RunStep.Status.SKIPPED, finished_at=now):
                        events.append(_step_event(step, "skipped", reason="`when` is false"))
                        changed = True
                    continue
            if node.type == "approval":
                raw = node_of(run, node_id).get("message") or "Approve to continue."
                try:
                    message = render_value(raw, context_for(raw))
                except (TemplateError, SparkOpsError):
                    message = raw
                message = secrets.redact(message)
                if set_status(step, RunStep.Status.WAITING_APPROVAL, input={"message": message}):
                    events.append(_step_event(step, "waiting_approval"))
                    events.append(
                        {
                            "type": RunEvent.Type.APPROVAL_REQUESTED,
                            "node_id": node_id,
                            "payload": {"message": message},
                        }
                    )
                    changed = True
                continue
            if node.type == "tool" and _tool_needs_approval(run, node_id, step, events, set_status):
                changed = True
                continue
            if inline and _is_local(run, raw_nodes[node_id], tools):
                if inline_left <= 0:
                    deferred = True  # planned again right after this commit
                    continue
                inline_left -= 1
                _execute_inline(run, step, raw_nodes[node_id], secrets, tools, events)
                changed = True
                continue
            ready.append(step)
        if ready:
            # One UPDATE for every ready step (a 500-node fan-out queues in one statement).
            # Pending steps change only under the run lock we hold, so all of them move.
            RunStep.objects.filter(
                pk__in=[step.pk for step in ready], status=RunStep.Status.PENDING
            ).update(status=RunStep.Status.QUEUED, attempt=F("attempt") + 1, queued_at=now)
            for step in ready:
                step.status = RunStep.Status.QUEUED
                step.attempt += 1
                events.append(_step_event(step, "queued"))
                to_send.append((step.pk, step.attempt))
            changed = True
        result = planner.plan(nodes, {n: s.status for n, s in steps.items()})

    if result.fatal:
        failed = result.fatal[0]
        step_error = RunStep.objects.filter(run=run, node_id=failed).values_list(
            "error", flat=True
        )[0]
        error = {
            "type": "step_failed",
            "message": f"Step '{failed}' failed: {(step_error or {}).get('message', '')}",
            "step": failed,
            "step_error": step_error,
        }
        events_append(run.pk, events)
        finish_run(run, Run.Status.FAILED, error=error)
        return
    if result.run_status == planner.SUCCEEDED:
        events_append(run.pk, events)
        try:
            output = render_value(definition.get("output"), context_for(definition.get("output")))
        except (TemplateError, SparkOpsError) as exc:
            finish_run(
                run, Run.Status.FAILED, error={"type": "output_error", "message": str(exc.detail)}
            )
            return
        if output is None:
            output = {
                node_id: state["output"]
                for node_id, state in step_states(run.pk).items()
                if state["status"] == RunStep.Status.SUCCEEDED
            }
        finish_run(run, Run.Status.SUCCEEDED, output=secrets.redact(output))
        return
    wanted = (
        Run.Status.WAITING_APPROVAL
        if result.run_status == planner.WAITING_APPROVAL
        else Run.Status.RUNNING
    )
    if run.status != wanted:
        run.status = wanted
        run.save(update_fields=["status"])
        events.append({"type": RunEvent.Type.RUN_STATUS, "payload": {"status": wanted}})
    events_append(run.pk, events)
    for step_id, attempt in to_send:
        send_step(step_id, attempt)
    if deferred:
        send_advance(run.pk)


def _tool_needs_approval(run: Run, node_id: str, step: Any, events: list, set_status: Any) -> bool:
    """An enforced `tool_requires_approval` policy naming this node's tool parks the step in
    `waiting_approval` before it is queued; approving it queues it (runs.services.step_decide)."""
    from . import policy_hooks

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
    from runs.engine import executors

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
        error = _redacted(exc, checkpoint)
        events.extend(checkpoint.events)
    except Exception as exc:  # a bug or a database error: undo the step's writes, fail it
        transaction.savepoint_rollback(savepoint)
        del events[mark:]
        logger.exception("step %s attempt %s crashed (inline)", step.pk, attempt)
        error = _redacted(
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
            output=output,
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


# --- executing one attempt ---------------------------------------------------------------------


@observability.step_scope
def step_execute(*, step_id: int, attempt: int) -> None:
    step = step_start(step_id=step_id, attempt=attempt)
    if step is None:
        return
    if step.type == "agent":
        # An agent's loop can run for minutes: policies are read afresh at each call.
        _execute(step, attempt)
        return
    from . import policy_hooks

    with policy_hooks.cached():
        _execute(step, attempt)


def _execute(step: RunStep, attempt: int) -> None:
    from runs.engine import executors, heartbeat

    node = node_of(step.run, step.node_id)
    checkpoint = Checkpoint(step, attempt, step_timeout(node), deferred_writes=step.type != "agent")
    try:
        with heartbeat.beating(step.pk, attempt), observability.step_span(step, attempt):
            output = executors.execute(step=step, node=node, checkpoint=checkpoint)
    except StepPaused:  # waiting for an approval, its loop saved (steps.step_pause)
        return
    except StepSuperseded:
        logger.info("step %s attempt %s superseded; result discarded", step.pk, attempt)
        return
    except StepError as exc:
        step_fail(
            step=step, attempt=attempt, error=_redacted(exc, checkpoint), checkpoint=checkpoint
        )
        return
    except Exception as exc:  # a bug or an unexpected library error: fail clearly, don't retry
        logger.exception("step %s attempt %s crashed", step.pk, attempt)
        error = StepError("internal_error", f"{exc.__class__.__name__}: {exc}")
        step_fail(
            step=step, attempt=attempt, error=_redacted(error, checkpoint), checkpoint=checkpoint
        )
        return
    step_succeed(
        step=step,
        attempt=attempt,
        output=checkpoint.secrets.redact(output),
        checkpoint=checkpoint,
    )


def _redacted(error: StepError, checkpoint: Checkpoint) -> StepError:
    error.message = checkpoint.secrets.redact(error.message)
    error.details = checkpoint.secrets.redact(error.details)
    return error


# --- recovery ------------------------------------------------------------------------------------


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


__all__ = ["run_advance", "run_enqueue", "send_advance", "step_execute", "sweep"]
