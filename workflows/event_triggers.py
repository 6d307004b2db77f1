"""Event triggers: a run of one workflow reaching a final status starts another workflow of the
same project, its input mapped from the source run. A started run carries
`chain_depth = source.chain_depth + 1`; past SPARKOPS_MAX_CHAIN_DEPTH the trigger is refused
and the refusal recorded, so a cycle (A starts B starts A...) ends."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from accounts.models import User
from sparkops.errors import InvalidInput, SparkOpsError

from . import templating
from .models import EventTrigger, EventTriggerFire, Workflow
from .webhooks import mapping_clean

logger = logging.getLogger(__name__)

MAPPING_ROOTS = frozenset({"run", "output"})
EDITABLE_FIELDS = {"name", "statuses", "input_mapping", "enabled"}
FINAL_STATUSES = ("succeeded", "failed", "cancelled", "timed_out")


def event_trigger_clean(fields: dict[str, Any]) -> dict[str, Any]:
    """Checks the fields a create or update sets (the admin form calls this too)."""
    cleaned = dict(fields)
    errors: dict[str, list[str]] = {}
    if "name" in cleaned and not str(cleaned["name"] or "").strip():
        errors["name"] = ["A name is required."]
    if "statuses" in cleaned:
        statuses = cleaned["statuses"]
        if (
            not isinstance(statuses, list)
            or not statuses
            or any(s not in FINAL_STATUSES for s in statuses)
        ):
            errors["statuses"] = [
                f"A non-empty list of final statuses: {', '.join(FINAL_STATUSES)}."
            ]
        else:
            cleaned["statuses"] = sorted(set(statuses), key=FINAL_STATUSES.index)
    if "input_mapping" in cleaned:
        try:
            cleaned["input_mapping"] = mapping_clean(cleaned["input_mapping"], MAPPING_ROOTS)
        except InvalidInput as exc:
            errors.update(exc.errors or {})
    if errors:
        raise InvalidInput("Invalid input.", errors=errors)
    return cleaned


@transaction.atomic
def event_trigger_create(
    *,
    actor: User | None,
    source_workflow: Workflow,
    target_workflow: Workflow,
    name: str,
    statuses: list[str] | None = None,
    **fields: Any,
) -> EventTrigger:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot set {', '.join(sorted(unknown))}.")
    if source_workflow.project_id != target_workflow.project_id:
        raise InvalidInput(
            "Invalid input.",
            errors={"target_workflow": ["Must be in the project of the source workflow."]},
        )
    cleaned = event_trigger_clean(
        {**fields, "name": name, "statuses": ["succeeded"] if statuses is None else statuses}
    )
    return EventTrigger.objects.create(
        project_id=source_workflow.project_id,
        source_workflow=source_workflow,
        target_workflow=target_workflow,
        created_by=actor,
        **cleaned,
    )


@transaction.atomic
def event_trigger_update(
    *, trigger: EventTrigger, actor: User | None, **fields: Any
) -> EventTrigger:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")
    cleaned = event_trigger_clean(fields)
    for name, value in cleaned.items():
        setattr(trigger, name, value)
    trigger.save(update_fields=[*cleaned, "updated_at"])
    return trigger


@transaction.atomic
def event_trigger_delete(*, trigger: EventTrigger, actor: User | None) -> None:
    trigger.delete()


def source_context(run: Any) -> dict[str, Any]:
    """What an input mapping sees: `run` (the source run) and `output` (its output)."""
    return {
        "run": {
            "id": str(run.pk),
            "status": run.status,
            "trigger": run.trigger,
            "input": run.input,
            "output": run.output,
            "error": run.error,
            "chain_depth": run.chain_depth,
            "workflow": run.workflow_id,
            "project": str(run.project_id),
        },
        "output": run.output,
    }


def _input_for(trigger: EventTrigger, run: Any) -> dict[str, Any]:
    if trigger.input_mapping is None:
        output = run.output
        if isinstance(output, dict):
            return output
        return {} if output is None else {"output": output}
    value = templating.render_value(trigger.input_mapping, source_context(run))
    if not isinstance(value, dict):
        raise InvalidInput("The input mapping must produce a JSON object.")
    return value


def _error_text(exc: SparkOpsError) -> str:
    parts = [str(exc.detail)]
    for key, messages in (exc.errors or {}).items():
        listed = messages if isinstance(messages, list) else [messages]
        parts.append(f"{key}: {'; '.join(str(m) for m in listed)}")
    return " ".join(parts)


def _fire(trigger: EventTrigger, run: Any) -> EventTriggerFire | None:
    from runs.models import Run
    from runs.services import run_create

    depth = run.chain_depth + 1
    try:
        with transaction.atomic():
            fire = EventTriggerFire.objects.create(
                trigger=trigger,
                source_run=run,
                status=EventTriggerFire.Status.FAILED,
                chain_depth=depth,
            )
    except IntegrityError:
        return None  # this source run fired this trigger already
    limit = settings.SPARKOPS_MAX_CHAIN_DEPTH
    if depth > limit:
        fire.status = EventTriggerFire.Status.REFUSED
        fire.reason = (
            f"Chain depth {depth} would exceed SPARKOPS_MAX_CHAIN_DEPTH ({limit}); "
            "not started (a trigger cycle?)."
        )
    else:
        try:  # run_create is a savepoint of its own: a refusal leaves its decisions recorded
            started = run_create(
                workflow=trigger.target_workflow,
                input=_input_for(trigger, run),
                actor=None,
                trigger=Run.Trigger.EVENT,
                chain_depth=depth,
            )
        except SparkOpsError as exc:
            fire.reason = _error_text(exc)
        else:
            fire.status = EventTriggerFire.Status.STARTED
            fire.run = started
    fire.save(update_fields=["status", "reason", "run"])
    return fire


def event_triggers_fire(*, run: Any) -> list[EventTriggerFire]:
    """A run finished (engine transaction, run row locked): start what listens for it. Never
    raises: refusals and failures are recorded on EventTriggerFire rows."""
    fires = []
    triggers = EventTrigger.objects.filter(
        source_workflow_id=run.workflow_id, enabled=True
    ).select_related("target_workflow")
    for trigger in triggers:
        if run.status not in trigger.statuses:
            continue
        fire = _fire(trigger, run)
        if fire is not None:
            fires.append(fire)
    return fires
