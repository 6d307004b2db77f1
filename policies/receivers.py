"""Where governance listens: the engine's charges (budgets, usage), its event log (linking a
run start's audit decisions to the new run), logins, and the end of each Celery task."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from celery.signals import task_postrun, task_prerun
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from runs import signals as run_signals

from . import enforcement
from .audit import audit_record
from .budgets import usage_charge


@receiver(run_signals.usage_charged, dispatch_uid="policies.usage_charged")
def on_usage_charged(
    sender: Any,
    run: Any,
    step: Any,
    cost: Decimal,
    input_tokens: int = 0,
    output_tokens: int = 0,
    **kwargs: Any,
) -> None:
    """Inside the charging transaction (the run row locked, the attempt fence passed): record
    the call and charge the budgets covering it, once."""
    from runs.models import RunEvent
    from runs.services.events import events_append

    call = (
        RunEvent.objects.filter(run_id=run.pk, node_id=step.node_id, type=RunEvent.Type.LLM_CALL)
        .order_by("-seq")
        .values_list("payload", flat=True)
        .first()
    )
    call = call if isinstance(call, dict) else {}
    events = usage_charge(
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
    if events:
        events_append(
            run.pk,
            [
                {
                    "type": RunEvent.Type.POLICY,
                    "node_id": step.node_id,
                    "attempt": step.attempt,
                    "payload": payload,
                }
                for payload in events
            ],
        )


def _agent_id(run: Any, step: Any) -> Any:
    from agents.models import Agent

    try:
        nodes = step.run.version.snapshot["definition"]["nodes"]
    except (AttributeError, KeyError, TypeError):
        return None
    slug = next((n.get("agent") for n in nodes if n.get("id") == step.node_id), None)
    if not slug:
        return None
    return (
        Agent.objects.filter(project_id=run.project_id, slug=str(slug))
        .values_list("pk", flat=True)
        .first()
    )


@receiver(run_signals.events_appended, dispatch_uid="policies.events_appended")
def on_events_appended(sender: Any, run_id: Any, events: list[Any], **kwargs: Any) -> None:
    enforcement.link_run_start_decisions(run_id, events)


@receiver(user_logged_in, dispatch_uid="policies.user_logged_in")
def on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Session logins (the operator console); the JWT login view records its own."""
    audit_record(
        actor=user, project=None, action="auth.login", obj=user, changes={"via": "session"}
    )


@receiver(user_login_failed, dispatch_uid="policies.user_login_failed")
def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    email = str(credentials.get("username") or credentials.get("email") or "")[:254]
    audit_record(actor=None, project=None, action="auth.login_failed", changes={"email": email})


@task_prerun.connect(dispatch_uid="policies.task_prerun")
def on_task_prerun(**kwargs: Any) -> None:
    enforcement.clear_pending()


@task_postrun.connect(dispatch_uid="policies.task_postrun")
def on_task_postrun(**kwargs: Any) -> None:
    """A Celery task (schedules, event triggers) may have refused a run start."""
    enforcement.flush_refused()
    enforcement.clear_pending()
