"""Governance at the engine's fixed points (DESIGN.md §7): `policies.enforcement` decides,
this module acts on its decisions. Every decision that is not a plain allow is recorded (a
PolicyDecision row and a `policy.decision` run event, in one transaction); an enforced denial
becomes a non-retryable StepError (`policy_denied`, `budget_exceeded`) or, before a run exists,
the refusal `run_create` raises; a tool call an enforced `tool_requires_approval` policy names
waits for a person: a tool step is parked by the planner (`tool_needs_approval`), a call a
model makes in an agent loop pauses the step where it is (`before_tool_call` raises
ToolApprovalRequired)."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

from django.db import transaction

from policies import enforcement
from policies.enforcement import Decision
from policies.models import Policy, PolicyDecision
from runs.engine.errors import StepError
from runs.models import Run, RunEvent

from .events import events_append

logger = logging.getLogger("policies.enforcement")

Point = PolicyDecision.Point
Outcome = PolicyDecision.Outcome


def cached() -> AbstractContextManager[None]:
    """Read each project's policies once inside the block (see `policies_cached`)."""
    return enforcement.policies_cached()


class ToolApprovalRequired(Exception):
    """An enforced `tool_requires_approval` policy holds a tool call a model made in an agent
    loop (the decision is recorded): the loop saves its state and pauses the step for a
    person's decision (runs.engine.agent) instead of failing it. `arguments` are the call's,
    after content rules: what the tool gets once approved."""

    def __init__(self, reason: str, *, arguments: Any, policy: dict[str, Any] | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.arguments = arguments
        self.policy = policy


# --- recording -------------------------------------------------------------------------------


def _event(row: PolicyDecision) -> dict[str, Any]:
    return {
        "type": RunEvent.Type.POLICY,
        "node_id": row.node_id,
        "attempt": row.attempt,
        "payload": {
            "source": "budget" if row.budget_id else "policy",
            "policy": row.policy_id,
            "budget": row.budget_id,
            "name": row.source_name,
            "kind": row.kind,
            "mode": row.mode,
            "point": row.point,
            "outcome": row.outcome,
            "reason": row.reason,
            "details": row.details,
        },
    }


def record(
    decisions: list[Decision], *, step: Any = None, run: Any = None, node_id: str = ""
) -> list[PolicyDecision]:
    """Write the decisions and their run events (one transaction)."""
    if not decisions:
        return []
    run = run if run is not None else step.run
    rows = enforcement.decision_rows(
        decisions,
        project_id=run.project_id,
        run_id=run.pk,
        workflow_id=run.workflow_id,
        node_id=step.node_id if step is not None else node_id,
        attempt=step.attempt if step is not None else None,
    )
    with transaction.atomic():
        PolicyDecision.objects.bulk_create(rows)
        events_append(run.pk, [_event(row) for row in rows])
    for row in rows:
        logger.info(
            "policy decision",
            extra={
                "run_id": str(run.pk),
                "step": row.node_id,
                "project_id": str(row.project_id),
                "policy": row.source_name,
                "outcome": row.outcome,
                "point": row.point,
            },
        )
    return rows


# --- run start -------------------------------------------------------------------------------


def before_run_start(
    *, workflow: Any
) -> tuple[list[PolicyDecision], enforcement.RunStartRefused | None]:
    """Decide a run start inside `run_create`'s transaction, before the run row is written,
    and write the decisions that are not a plain allow. Returns them (audit-mode ones are
    linked to the run once it exists: `link_run_start`) and the refusal to raise, if any:
    409 `policy_denied` naming the policy, 402 `budget_exceeded` naming the budget.
    The caller raises it after its transaction has committed, so the refusal stays on record."""
    project_id = workflow.project_id
    decisions, refusal = enforcement.decide_run_start(
        workflow=workflow,
        active_runs=Run.objects.filter(project_id=project_id).active().count,
    )
    rows = enforcement.decision_rows(decisions, project_id=project_id, workflow_id=workflow.pk)
    PolicyDecision.objects.bulk_create(rows)
    if refusal is not None:
        logger.info(
            "run start refused",
            extra={
                "project_id": str(project_id),
                "workflow": workflow.pk,
                "reason": refusal.detail,
            },
        )
    return rows, refusal


def link_run_start(run: Run, rows: list[PolicyDecision]) -> None:
    """The decisions of a run start that went ahead (audit mode) belong to the new run: link
    them and log them as its events (in `run_create`'s transaction)."""
    if not rows:
        return
    PolicyDecision.objects.filter(pk__in=[row.pk for row in rows]).update(run_id=run.pk)
    for row in rows:
        row.run_id = run.pk
    events_append(run.pk, [_event(row) for row in rows])


# --- steps -----------------------------------------------------------------------------------


def _refuse(decision: Decision) -> None:
    if decision.budget is not None:
        raise StepError(
            "budget_exceeded", decision.reason, budget=enforcement.budget_dict(decision.budget)
        )
    error_type = (
        "approval_required" if decision.outcome == Outcome.REQUIRE_APPROVAL else "policy_denied"
    )
    raise StepError(error_type, decision.reason, policy=enforcement.policy_dict(decision.policy))


def _settle(decisions: list[Decision], step: Any) -> None:
    record(decisions, step=step)
    blocking = next((d for d in decisions if d.blocking), None)
    if blocking is not None:
        _refuse(blocking)


def on_prompt(*, step: Any, agent: Any, text: str) -> str:
    """The rendered prompt after content rules (blocked patterns, PII): redacted, or a
    `policy_denied` StepError. Call before the prompt is recorded or sent."""
    cleaned, decisions = enforcement.scan_text(
        project_id=step.run.project_id, target="prompt", point=Point.PROMPT, text=text
    )
    _settle(decisions, step)
    return cleaned


def before_model_call(*, step: Any, agent: Any, request: Any) -> None:
    """Allowed models, tokens per call, cost per run and `block` budgets; tool results that
    came back since the last call are scanned as prompt (in place)."""
    run = step.run
    content_policies = None
    decisions: list[Decision] = []
    for message in request.messages:
        if message.role != "tool" or getattr(message, "_policy_checked", False):
            continue
        if content_policies is None:
            content_policies = enforcement.policies_of(run.project_id, enforcement.CONTENT_KINDS)
        message.content, found = enforcement.scan_text(
            project_id=run.project_id,
            target="prompt",
            point=Point.PROMPT,
            text=message.content or "",
            policies=content_policies,
        )
        message._policy_checked = True
        decisions += found
        if any(d.blocking for d in found):
            _settle(decisions, step)
    policies = enforcement.policies_of(run.project_id, enforcement.MODEL_CALL_KINDS)
    run_cost = None
    if any(p.kind == Policy.Kind.MAX_COST_PER_RUN for p in policies):
        run_cost = Run.objects.filter(pk=run.pk).values_list("cost", flat=True).first()
    # Text a file gives (agents.attachments) is prompt too; an image is counted by the provider.
    prompt = "".join(
        (m.content or "") + "".join(a.text for a in m.attachments) for m in request.messages
    )
    found, max_tokens = enforcement.evaluate_model_call(
        project_id=run.project_id,
        provider=agent.provider,
        model=request.model,
        max_tokens=request.max_tokens,
        input_text=prompt,
        run_cost=run_cost,
        policies=policies,
    )
    decisions += found
    request.max_tokens = max_tokens
    if not any(d.blocking for d in decisions):
        exhausted = enforcement.budget_check(
            project=run.project, workflow_id=run.workflow_id, agent_ids=[agent.pk]
        )
        if exhausted is not None:
            decisions.append(
                enforcement.budget_decision(
                    Point.MODEL_CALL, exhausted, prefix="Model call refused: "
                )
            )
    _settle(decisions, step)


def on_model_output(*, step: Any, agent: Any, content: str | None) -> str | None:
    """The model's reply after content rules: redacted, or a `policy_denied` StepError."""
    if not content:
        return content
    cleaned, decisions = enforcement.scan_text(
        project_id=step.run.project_id, target="output", point=Point.MODEL_OUTPUT, text=content
    )
    _settle(decisions, step)
    return cleaned


def before_tool_call(
    *, step: Any, tool: Any, arguments: Any, call_approved: bool | None = None
) -> Any:
    """Allow/deny lists and approvals, then content rules over the arguments; returns the
    arguments to use (redacted where a policy says so).

    `call_approved` is given for a call a model made in an agent loop: whether a person
    approved that very call (approval is per call, not per step). Held, it raises
    ToolApprovalRequired once its decision is recorded, and the loop pauses. A tool step's own
    call is approved by the decision on the step (the planner held it before it ran)."""
    project_id = step.run.project_id
    if call_approved is None:
        approved = step.decided_at is not None and step.status != "failed"
    else:
        approved = call_approved
    decisions = enforcement.evaluate_tool_call(
        project_id=project_id, tool_name=tool.name, approved=approved
    )
    held = next((d for d in decisions if d.blocking), None)
    if held is not None and held.outcome == Outcome.REQUIRE_APPROVAL and call_approved is not None:
        # Content rules first: arguments they refuse fail the step now, not after an approval,
        # and the person approves the arguments the tool will get, redacted as they say (the
        # loop saves and resumes with those, so the redaction is recorded here, once).
        arguments, found = enforcement.scan_value(
            project_id=project_id, target="tool_arguments", point=Point.TOOL_CALL, value=arguments
        )
        _settle(found, step)
        record(decisions, step=step)
        raise ToolApprovalRequired(
            held.reason, arguments=arguments, policy=enforcement.policy_dict(held.policy)
        )
    if not any(d.blocking for d in decisions):
        arguments, found = enforcement.scan_value(
            project_id=project_id,
            target="tool_arguments",
            point=Point.TOOL_CALL,
            value=arguments,
        )
        decisions += found
    _settle(decisions, step)
    return arguments


def on_tool_result(*, step: Any, tool: Any, output: Any) -> Any:
    """Content rules over a tool's output, before it is recorded (step output, tool.call
    event) or fed back to a model."""
    output, decisions = enforcement.scan_value(
        project_id=step.run.project_id, target="tool_output", point=Point.TOOL_CALL, value=output
    )
    _settle(decisions, step)
    return output


def tool_needs_approval(*, run: Any, node_id: str, tool_name: str) -> str | None:
    """For the planner, when a tool node is ready: the reason it must wait for an approval
    before it is queued (an enforced `tool_requires_approval` policy names the tool), recorded
    as a `require_approval` decision; None to queue it. Approving the step must then queue it
    (with `decided_at` set, `before_tool_call` lets the approved call through)."""
    found = [
        d
        for d in enforcement.evaluate_tool_call(project_id=run.project_id, tool_name=tool_name)
        if d.outcome == Outcome.REQUIRE_APPROVAL
    ]
    if not found:
        return None
    record(found[:1], run=run, node_id=node_id)
    return found[0].reason
