"""Charging a model call: to its step, its run and the budgets covering it, exactly once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agents.models import Agent
from policies.budgets import usage_charge
from runs.engine.errors import StepSuperseded
from runs.models import Run, RunEvent, RunStep
from runs.signals import usage_charged

from .events import events_append
from .state import lock_run, node_of


def usage_record(
    *,
    step: RunStep,
    attempt: int,
    input_tokens: int,
    output_tokens: int,
    cost: Decimal,
    event: dict[str, Any],
) -> None:
    """Charge one model call to the step, the run and the budgets covering it, and log it,
    exactly once: the charge is gated by the attempt fence, so a superseded attempt charges
    nothing and stops. Crossing a budget's threshold or limit is a `policy.decision` event."""
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
        call = event.get("payload") or {}
        crossings = usage_charge(
            run=run,
            step=step,
            cost=Decimal(cost or 0),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            agent_id=_agent_id(run, step),
            provider=str(call.get("provider") or ""),
            model=str(call.get("model") or ""),
            price_unknown=bool(call.get("price_unknown")),
        )
        if crossings:
            events_append(
                run.pk,
                [
                    {
                        "type": RunEvent.Type.POLICY,
                        "node_id": step.node_id,
                        "attempt": attempt,
                        "payload": payload,
                    }
                    for payload in crossings
                ],
            )
        usage_charged.send(
            sender=Run,
            run=run,
            step=step,
            cost=cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )


def _agent_id(run: Run, step: RunStep) -> int | None:
    """The agent of `step`'s node in the run's pinned definition (for per-agent budgets)."""
    try:
        slug = node_of(run, step.node_id).get("agent")
    except KeyError:
        return None
    if not slug:
        return None
    return (
        Agent.objects.filter(project_id=run.project_id, slug=str(slug))
        .values_list("pk", flat=True)
        .first()
    )
