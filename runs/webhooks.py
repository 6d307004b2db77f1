"""Outbound webhooks for run events: reportable run events (started, finished, approval
requested) become outbox rows in the engine's own transaction. The endpoints, signing and
delivery are projects' (projects.webhooks); reading runs puts this part above the engine.
`on_events_appended` listens to runs.signals.events_appended (connected in RunsConfig.ready);
a failure here must not roll the run's transition back, so it works in a savepoint and logs."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from projects import webhooks
from projects.models import WebhookDelivery, WebhookEndpoint

from .models import Run, RunEvent

logger = logging.getLogger(__name__)

_RUN_STATUSES = {
    "succeeded": "run.succeeded",
    "failed": "run.failed",
    "cancelled": "run.cancelled",
    "timed_out": "run.timed_out",
}


def run_event_types(events: list[Any]) -> list[tuple[str, Any]]:
    """(webhook event type, RunEvent) for the events webhooks report; no queries."""
    found = []
    for event in events:
        if event.type == "run.status":
            status = (event.payload or {}).get("status")
            if status == "running":
                found.append(("run.started", event))
            elif status in _RUN_STATUSES:
                found.append((_RUN_STATUSES[status], event))
        elif event.type == "approval.requested":
            found.append(("approval.requested", event))
        elif event.type == "policy.decision" and _is_budget_threshold(event.payload):
            found.append(("budget.threshold", event))
    return found


def _is_budget_threshold(payload: Any) -> bool:
    """A budget's soft threshold crossed by a model call (runs.services.usage records it)."""
    payload = payload or {}
    return payload.get("source") == "budget" and payload.get("outcome") == "budget_threshold"


_BUDGET_FIELDS = ("name", "action", "period", "period_start", "spent", "limit", "soft_threshold")


def _run_data(run: Any, status: str) -> dict[str, Any]:
    workflow = run.workflow
    return {
        "project": {"id": str(run.project_id), "slug": run.project.slug},
        "run": {
            "id": str(run.pk),
            "status": status,
            "trigger": run.trigger,
            "workflow": {"id": workflow.pk, "slug": workflow.slug, "name": workflow.name},
            "chain_depth": run.chain_depth,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "duration_ms": run.duration_ms,
            "output": run.output if status == "succeeded" else None,
            "error": run.error,
            "cost": str(run.cost),
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
        },
    }


def run_events_record(*, run_id: Any, events: list[Any]) -> list[WebhookDelivery]:
    """Outbox rows for a run's reportable events. Called in the engine's transaction; costs no
    query unless an event is reportable, then one (endpoints), plus the run if any subscribes."""
    found = run_event_types(events)
    if not found:
        return []
    endpoints = list(
        WebhookEndpoint.objects.filter(
            enabled=True, project__in=Run.objects.filter(pk=run_id).values("project_id")
        )
    )
    wanted = [
        (kind, event)
        for kind, event in found
        if any(endpoint.subscribes_to(kind) for endpoint in endpoints)
    ]
    if not wanted:
        return []
    run = Run.objects.select_related("project", "workflow").get(pk=run_id)
    deliveries: list[WebhookDelivery] = []
    for kind, event in wanted:
        if kind == "run.started" and (
            RunEvent.objects.filter(
                run_id=run_id,
                type="run.status",
                payload__status__in=["running", "waiting_approval"],
                seq__lt=event.seq,
            ).exists()
        ):
            continue  # resumed after an approval, not started
        status = (event.payload or {}).get("status") or run.status
        data = _run_data(run, status if kind.startswith("run.") else run.status)
        if kind == "approval.requested":
            payload = event.payload or {}
            data["step"] = event.node_id
            data["message"] = payload.get("message", "")
            if "tool" in payload:  # a tool call a model made, held by a policy
                data["call"] = {key: payload.get(key) for key in ("tool", "arguments", "iteration")}
        elif kind == "budget.threshold":
            payload = event.payload or {}
            data["step"] = event.node_id
            data["budget"] = {"id": payload.get("budget")}
            data["budget"].update({key: payload.get(key) for key in _BUDGET_FIELDS})
            data["message"] = payload.get("reason", "")
        deliveries += webhooks.event_emit(
            project_id=run.project_id,
            event_type=kind,
            data=data,
            at=event.created_at,
            endpoints=endpoints,
        )
    return deliveries


def on_events_appended(sender: Any, run_id: Any, events: list[Any], **kwargs: Any) -> None:
    if not run_event_types(events):
        return  # most events (steps, LLM calls...) are not reported: no query at all
    try:
        with transaction.atomic():
            run_events_record(run_id=run_id, events=events)
    except Exception:
        logger.exception("recording webhook deliveries for run %s failed", run_id)
