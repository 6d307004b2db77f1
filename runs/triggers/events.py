"""Event triggers fire: a run of one workflow reaching a final status starts the triggers'
target workflows, each input mapped from the source run (see workflows.event_triggers for the
triggers themselves and the chain-depth rule)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from runs.models import Run
from runs.services import run_create
from sparkops import templating
from sparkops.errors import InvalidInput, SparkOpsError
from workflows.models import EventTrigger, EventTriggerFire


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


def triggers_listening(run: Any) -> list[EventTrigger]:
    """The enabled event triggers of the run's workflow."""
    return list(
        EventTrigger.objects.filter(
            source_workflow_id=run.workflow_id, enabled=True
        ).select_related("target_workflow")
    )


def event_triggers_fire(
    *, run: Any, triggers: list[EventTrigger] | None = None
) -> list[EventTriggerFire]:
    """A run finished (engine transaction, run row locked): start what listens for it
    (`triggers`, when the caller read them already). Never raises: refusals and failures are
    recorded on EventTriggerFire rows."""
    fires = []
    for trigger in triggers if triggers is not None else triggers_listening(run):
        if run.status not in trigger.statuses:
            continue
        fire = _fire(trigger, run)
        if fire is not None:
            fires.append(fire)
    return fires
