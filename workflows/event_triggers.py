"""Event triggers: a run of one workflow reaching a final status starts another workflow of the
same project, its input mapped from the source run. A started run carries
`chain_depth = source.chain_depth + 1`; past SPARKOPS_MAX_CHAIN_DEPTH the trigger is refused
and the refusal recorded, so a cycle (A starts B starts A...) ends. This module keeps the
triggers; `runs.triggers.events` fires them."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from accounts.models import User
from sparkops.audit import audit_record
from sparkops.errors import InvalidInput

from .models import EventTrigger, Workflow
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
    trigger = EventTrigger.objects.create(
        project_id=source_workflow.project_id,
        source_workflow=source_workflow,
        target_workflow=target_workflow,
        created_by=actor,
        **cleaned,
    )
    audit_record(
        actor=actor,
        project=trigger.project_id,
        action="event_trigger.create",
        obj=trigger,
        changes={"source_workflow": source_workflow, "target_workflow": target_workflow} | cleaned,
    )
    return trigger


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
    audit_record(
        actor=actor,
        project=trigger.project_id,
        action="event_trigger.update",
        obj=trigger,
        changes=cleaned,
    )
    return trigger


@transaction.atomic
def event_trigger_delete(*, trigger: EventTrigger, actor: User | None) -> None:
    audit_record(
        actor=actor, project=trigger.project_id, action="event_trigger.delete", obj=trigger
    )
    trigger.delete()
