"""Creating, cancelling, retrying and approving runs: what the API, the admin, schedules and
webhooks call."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from policies.enforcement import RunStartRefused
from projects.files import file_ref, file_resolve
from projects.models import project_ensure_writable
from runs.models import IdempotencyKey, Run, RunEvent, RunStep
from sparkops.audit import audit_record
from sparkops.errors import Conflict, InvalidInput, NotFound, Unprocessable
from sparkops.nul import MESSAGE as NUL_MESSAGE
from sparkops.nul import nul_path
from workflows.definition import expand_files, validate_input
from workflows.models import Workflow, WorkflowVersion

from . import policy_hooks
from .dispatch import send_advance, send_enqueue, send_step
from .events import event_append, events_append
from .planning import run_advance_locked
from .state import finish_run, lock_run


def run_create(*, workflow: Workflow, **create: Any) -> Run:
    """The database first: the run and one step row per node are committed, then the first task
    is sent after commit. If that send is lost, the sweeper sends it.

    A run start that policies or budgets refuse raises `RunStartRefused` once its decisions are
    written (in the caller's transaction, or committed when there is none): a caller that wraps
    this in a transaction of its own lets the refusal out of it (see run_create_idempotent)."""
    with transaction.atomic():
        outcome = _run_create(workflow=workflow, **create)
    if isinstance(outcome, RunStartRefused):
        raise outcome
    return outcome


def _input_files(workflow: Workflow, input_schema: Any, input: dict[str, Any]) -> Any:
    """The input with each `{"file": "<id>"}` its schema marks as a file (`"format": "file"`)
    checked (a file of the workflow's project) and replaced by the file's metadata (file_ref),
    what templates then read: `{{ input.doc.name }}`. A run retried with such an input is
    checked again (the file may have been deleted since)."""

    def resolve(value: Any, where: str) -> Any:
        if value is None:  # the schema allowed null: no file
            return None
        found = file_resolve(
            project=workflow.project, value=value, where=where, detail="Invalid run input."
        )
        return file_ref(found)

    return expand_files(input_schema, input, resolve)


def _run_create(
    *,
    workflow: Workflow,
    input: dict[str, Any] | None,
    actor: Any,
    trigger: str = Run.Trigger.API,
    version: WorkflowVersion | None = None,
    parent_run: Run | None = None,
    reuse_succeeded: bool = False,
    chain_depth: int = 0,
    parent_step: RunStep | None = None,
) -> Run | RunStartRefused:
    if workflow.status in (Workflow.Status.PAUSED, Workflow.Status.ARCHIVED):
        raise Conflict(f"The workflow is {workflow.status}; activate it to start runs.")
    project_ensure_writable(workflow.project)
    version = version or workflow.current_version
    definition = version.snapshot["definition"]
    input = input if input is not None else {}
    if not isinstance(input, dict):
        raise InvalidInput("Invalid run input.", errors={"input": ["Must be a JSON object."]})
    nul_at = nul_path(input, "input")  # webhook bodies, schedules and mappings come here too
    if nul_at is not None:
        raise InvalidInput("Invalid run input.", errors={nul_at: [NUL_MESSAGE]})
    validate_input(definition.get("input_schema"), input)
    input = _input_files(workflow, definition.get("input_schema"), input)
    decisions, refusal = policy_hooks.before_run_start(workflow=workflow)
    if refusal is not None:
        return refusal
    run = Run.objects.create(
        project_id=workflow.project_id,
        workflow=workflow,
        version=version,
        status=Run.Status.PENDING,
        trigger=trigger,
        input=input,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
        parent_run=parent_run,
        reuse_succeeded=reuse_succeeded,
        chain_depth=chain_depth,
        parent_step=parent_step,
    )
    reused = {}
    if parent_run is not None and reuse_succeeded:
        reused = {
            step.node_id: step
            # a map's items are reused by the map itself (runs.services.planning)
            for step in parent_run.steps.filter(
                status=RunStep.Status.SUCCEEDED, item_index__isnull=True
            )
        }
    now = timezone.now()
    steps = []
    for node in definition["nodes"]:
        previous = reused.get(node["id"])
        steps.append(
            RunStep(
                run=run,
                node_id=node["id"],
                type=node["type"],
                status=RunStep.Status.SUCCEEDED if previous else RunStep.Status.PENDING,
                input=previous.input if previous else None,
                output=previous.output if previous else None,
                reused_from=previous,
                finished_at=now if previous else None,
            )
        )
    RunStep.objects.bulk_create(steps)
    events = [
        {
            "type": RunEvent.Type.RUN_STATUS,
            "payload": {
                "status": "pending",
                "trigger": trigger,
                "version": version.number,
                **({"parent_run": str(parent_run.pk)} if parent_run else {}),
            },
        }
    ]
    events += [
        {
            "type": RunEvent.Type.STEP_STATUS,
            "node_id": node_id,
            "payload": {"status": "succeeded", "reused_from": str(step.run_id)},
        }
        for node_id, step in reused.items()
    ]
    events_append(run.pk, events)
    policy_hooks.link_run_start(run, decisions)
    audit_record(
        actor=actor,
        project=workflow.project_id,
        action="run.retry" if trigger == Run.Trigger.RETRY else "run.start",
        obj=run,
        changes={
            "workflow": workflow.pk,
            "version": version.number,
            "trigger": trigger,
            **({"parent_run": str(parent_run.pk)} if parent_run else {}),
        },
    )
    send_enqueue(run.pk)
    return run


def request_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class _KeyTaken(Exception):
    pass


def _key_record(scope: dict[str, Any], digest: str, run: Run, body: Any) -> None:
    try:
        with transaction.atomic():
            IdempotencyKey.objects.create(
                **scope, request_hash=digest, run=run, response=body, status_code=201
            )
    except IntegrityError:
        raise _KeyTaken() from None


def run_create_idempotent(
    *,
    key: str,
    body: Any,
    actor: Any,
    workflow: Workflow,
    render: Callable[[Run], Any],
    **create: Any,
) -> tuple[Run, Any, bool]:
    """Stripe's semantics for `Idempotency-Key`, scoped to (project, caller), kept 24 h.
    Returns (run, response body, replayed). The unique constraint on the key decides between
    concurrent requests: the loser's transaction rolls back and it replays the winner's run."""
    if len(key) > 255:
        raise InvalidInput("Idempotency-Key is longer than 255 characters.")
    digest = request_hash(body)
    cutoff = timezone.now() - timedelta(hours=settings.SPARKOPS_IDEMPOTENCY_TTL_HOURS)
    scope = {"project_id": workflow.project_id, "user": actor, "key": key}
    for _ in range(3):
        existing = IdempotencyKey.objects.filter(**scope, created_at__gte=cutoff).first()
        if existing is not None:
            if existing.request_hash != digest:
                raise Unprocessable(
                    "This Idempotency-Key was used with a different request body.",
                    error_type="idempotency_key_reused",
                )
            run = Run.objects.get(pk=existing.run_id)
            return run, existing.response if existing.response is not None else render(run), True
        outcome: tuple[Run, Any] | RunStartRefused
        try:
            with transaction.atomic():
                IdempotencyKey.objects.filter(**scope, created_at__lt=cutoff).delete()
                try:
                    run = run_create(workflow=workflow, actor=actor, **create)
                except RunStartRefused as refused:
                    outcome = refused  # commit its decisions; a refusal keeps no key
                else:
                    body_out = render(run)
                    _key_record(scope, digest, run, body_out)
                    outcome = (run, body_out)
        except _KeyTaken:
            continue  # another request holds the key: replay it on the next pass
        if isinstance(outcome, RunStartRefused):
            raise outcome
        return outcome[0], outcome[1], False
    raise Conflict("A request with this Idempotency-Key is in progress; retry shortly.")


@transaction.atomic
def run_cancel(*, run: Run, actor: Any) -> Run:
    """Queued steps are cancelled at once; running steps stop at their next checkpoint and their
    results are discarded; the run ends `cancelled`."""
    locked = lock_run(run.pk)
    if locked is None:
        raise NotFound("Run not found.")
    if locked.is_finished:
        raise Conflict(f"The run already finished ({locked.status}).")
    locked.cancel_requested = True
    locked.save(update_fields=["cancel_requested"])
    finish_run(
        locked,
        Run.Status.CANCELLED,
        error={"type": "cancelled", "message": f"Cancelled by {actor}."},
    )
    audit_record(actor=actor, project=locked.project_id, action="run.cancel", obj=locked)
    return locked


def run_retry(*, run: Run, actor: Any, from_failure: bool = False) -> Run:
    """A new run of the same pinned version and input, linked to `run`. With `from_failure`,
    the parent's succeeded steps are reused and only what failed or never ran runs again."""
    if not run.is_finished:
        raise Conflict("Only a finished run can be retried.")
    if from_failure and run.status == Run.Status.SUCCEEDED:
        raise Conflict("The run succeeded; there is no failure to resume from.")
    return run_create(
        workflow=run.workflow,
        input=run.input,
        actor=actor,
        trigger=Run.Trigger.RETRY,
        version=run.version,
        parent_run=run,
        reuse_succeeded=from_failure,
        chain_depth=run.chain_depth,
    )


@transaction.atomic
def step_decide(*, run: Run, node_id: str, actor: Any, approve: bool, comment: str = "") -> RunStep:
    """Approve or reject a step waiting for approval: an approval step, a tool step or an agent
    step whose tool call a `tool_requires_approval` policy holds. Approving a held call queues
    the step again to make it; rejecting fails the node (and so the run, unless the node says
    continue_on_failure)."""
    locked = lock_run(run.pk)
    if locked is None:
        raise NotFound("Run not found.")
    step = RunStep.objects.select_for_update().filter(run=locked, node_id=node_id).first()
    if step is None:
        raise NotFound(f"The run has no step '{node_id}'.")
    if step.status != RunStep.Status.WAITING_APPROVAL or locked.is_finished:
        raise Conflict(f"Step '{node_id}' is not waiting for approval (it is {step.status}).")
    now = timezone.now()
    decision = {"approved": approve, "by": str(actor), "comment": comment}
    step.decided_by = actor if getattr(actor, "is_authenticated", False) else None
    step.decided_at = now
    step.decision_comment = comment
    step.finished_at = now
    if approve and step.type in ("tool", "agent"):
        # A tool call held by a `tool_requires_approval` policy: approval lets it run. For a
        # tool step `decided_at` is what the policy check looks for; an agent step resumes its
        # saved loop with exactly the held call approved (runs.engine.agent).
        if step.state:
            key = step.state["pending"]["key"]
            step.state = {**step.state, "approved": [*step.state.get("approved", []), key]}
        step.status = RunStep.Status.QUEUED
        step.attempt += 1
        step.queued_at = now
        step.finished_at = None
        send_step(step.pk, step.attempt)
    elif approve:
        step.status = RunStep.Status.SUCCEEDED
        step.output = decision
    else:
        step.status = RunStep.Status.FAILED
        step.error = {"type": "rejected", "message": f"Rejected by {actor}: {comment}".strip()}
        step.state = None
    step.save(
        update_fields=[
            "status",
            "state",
            "output",
            "error",
            "decided_by",
            "decided_at",
            "decision_comment",
            "finished_at",
            "attempt",
            "queued_at",
        ]
    )
    event_append(locked.pk, RunEvent.Type.APPROVAL_DECIDED, decision, node_id=node_id)
    event_append(
        locked.pk,
        RunEvent.Type.STEP_STATUS,
        {"status": step.status, **({"error": step.error} if not approve else {})},
        node_id=node_id,
        attempt=step.attempt if step.status == RunStep.Status.QUEUED else None,
    )
    if locked.status == Run.Status.WAITING_APPROVAL:
        locked.status = Run.Status.RUNNING
        locked.save(update_fields=["status"])
        event_append(locked.pk, RunEvent.Type.RUN_STATUS, {"status": "running"})
    audit_record(
        actor=actor,
        project=locked.project_id,
        action="run.approve" if approve else "run.reject",
        obj=locked,
        changes={"node_id": node_id, "comment": comment},
    )
    run_advance_locked(locked)
    return step


def run_kick(*, run: Run) -> None:
    """Plan a run again (admin "nudge"; the sweeper does the same on its own)."""
    with transaction.atomic():
        send_advance(run.pk)
