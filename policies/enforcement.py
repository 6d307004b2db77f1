"""Policy and budget evaluation at the engine's fixed points (DESIGN.md §7).

`evaluate_*` functions are pure decisions over a project's enabled policies (its own and the
global ones, lower priority numbers first) and budgets; the dry-run endpoint calls them as they
are. The `check_*` functions are what the engine calls (through runs.services.policy_hooks):
they record every decision that is not a plain allow (a `PolicyDecision` row and a
`policy.decision` run event), apply redactions and clamps, and refuse what an enforced policy
denies: a run start with a 409 (policy) or 402 (budget) naming it, a step with a
non-retryable `StepError` (`policy_denied`, `budget_exceeded`). A tool call an enforced
`tool_requires_approval` policy names waits for a person instead: a tool step is parked by the
planner (`pause_for_approval`), a call a model makes in an agent loop pauses the step where it
is (`check_tool_call` raises ToolApprovalRequired). Audit-mode policies record what they would
have done and change nothing."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from sparkops.errors import Conflict, SparkOpsError

from . import rules
from .budgets import budget_check, project_zone
from .models import Budget, Policy, PolicyDecision

logger = logging.getLogger(__name__)

Point = PolicyDecision.Point
Outcome = PolicyDecision.Outcome
K = Policy.Kind

RUN_START_KINDS = (K.MAX_CONCURRENT_RUNS, K.ALLOWED_HOURS)
MODEL_CALL_KINDS = (K.ALLOWED_MODELS, K.MAX_TOKENS_PER_CALL, K.MAX_COST_PER_RUN)
TOOL_KINDS = (K.TOOL_ALLOWLIST, K.TOOL_DENYLIST, K.TOOL_REQUIRES_APPROVAL)
CONTENT_KINDS = (K.BLOCKED_PATTERNS, K.PII)
BLOCKING = {Outcome.DENY, Outcome.REQUIRE_APPROVAL}


@dataclass
class Decision:
    point: str
    outcome: str
    reason: str
    policy: Policy | None = None
    budget: Budget | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        return self.outcome in BLOCKING

    @property
    def name(self) -> str:
        source = self.policy or self.budget
        return source.name if source is not None else ""

    @property
    def kind(self) -> str:
        return self.policy.kind if self.policy is not None else "budget"

    @property
    def mode(self) -> str:
        return self.policy.mode if self.policy is not None else Policy.Mode.ENFORCE

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.pk if self.policy else None,
            "budget": self.budget.pk if self.budget else None,
            "name": self.name,
            "kind": self.kind,
            "mode": self.mode,
            "point": self.point,
            "outcome": self.outcome,
            "enforced": not self.outcome.startswith("audit_"),
            "reason": self.reason,
            "details": self.details,
        }


def _decide(policy: Policy, point: str, outcome: str, reason: str, **details: Any) -> Decision:
    """An enforce-mode outcome as it is, or its `audit_` twin for an audit-mode policy."""
    if policy.mode == Policy.Mode.AUDIT:
        outcome = f"audit_{outcome}"
        reason = f"[audit] {reason}"
    return Decision(point, outcome, reason, policy=policy, details=details)


_cache: contextvars.ContextVar[dict[str, list[Policy]] | None] = contextvars.ContextVar(
    "sparkops_policy_cache", default=None
)


@contextlib.contextmanager
def policies_cached() -> Iterator[None]:
    """Inside the block each project's policies are read once. The planner opens one around
    the steps it runs inline in one transaction (a policy edited meanwhile applies from the
    next planning, as it would to a step a worker already started). Nested blocks share the
    outermost one's reads."""
    if _cache.get() is not None:
        yield
        return
    token = _cache.set({})
    try:
        yield
    finally:
        _cache.reset(token)


def policies_of(project_id: Any, kinds: tuple[str, ...]) -> list[Policy]:
    cache = _cache.get()
    if cache is None:
        return list(Policy.objects.applicable_to(project_id).filter(kind__in=kinds))
    key = str(project_id)
    if key not in cache:
        cache[key] = list(Policy.objects.applicable_to(project_id))
    return [policy for policy in cache[key] if policy.kind in kinds]


def _label(policy: Policy) -> str:
    scope = "global policy" if policy.is_global else "policy"
    return f"{scope} '{policy.name}'"


# --- pure evaluation ---------------------------------------------------------------------------


def evaluate_run_start(
    *, project: Any, at: datetime | None = None, policies: list[Policy] | None = None
) -> list[Decision]:
    from runs.models import Run

    at = at or timezone.now()
    decisions = []
    for policy in policies if policies is not None else policies_of(project.pk, RUN_START_KINDS):
        rule = policy.rule
        if policy.kind == K.MAX_CONCURRENT_RUNS:
            active = Run.objects.filter(project=project, status__in=Run.ACTIVE_STATUSES).count()
            if active >= rule["max_runs"]:
                decisions.append(
                    _decide(
                        policy,
                        Point.RUN_START,
                        Outcome.DENY,
                        f"Refused by {_label(policy)}: the project has {active} active run(s); "
                        f"at most {rule['max_runs']} may run at once.",
                        active=active,
                        max_runs=rule["max_runs"],
                    )
                )
        elif policy.kind == K.ALLOWED_HOURS:
            zone = project_zone(project)
            if not rules.within_windows(rule, at, zone):
                windows = ", ".join(
                    f"{'/'.join(w.get('days') or ['daily'])} {w['start']}-{w['end']}"
                    for w in rule["windows"]
                )
                tz = rule.get("timezone") or str(zone)
                decisions.append(
                    _decide(
                        policy,
                        Point.RUN_START,
                        Outcome.DENY,
                        f"Refused by {_label(policy)}: runs may start only {windows} ({tz}).",
                        at=at.isoformat(),
                    )
                )
    return decisions


def evaluate_model_call(
    *,
    project_id: Any,
    provider: str,
    model: str,
    max_tokens: int | None,
    input_text: str = "",
    run_cost: Decimal | None = None,
    policies: list[Policy] | None = None,
) -> tuple[list[Decision], int | None]:
    """Decisions, and the max_tokens the call should carry (lowered by a clamp)."""
    decisions = []
    target = f"{provider}/{model}"
    for policy in policies if policies is not None else policies_of(project_id, MODEL_CALL_KINDS):
        rule = policy.rule
        if policy.kind == K.ALLOWED_MODELS:
            if rules.matches_any(target, rule["models"]) is None:
                decisions.append(
                    _decide(
                        policy,
                        Point.MODEL_CALL,
                        Outcome.DENY,
                        f"Model '{target}' is not allowed by {_label(policy)} "
                        f"(allowed: {', '.join(rule['models'])}).",
                        model=target,
                    )
                )
        elif policy.kind == K.MAX_TOKENS_PER_CALL:
            limit = rule["max_tokens"]
            estimate = rules.estimate_tokens(input_text) if input_text else 0
            if rule.get("max_input_tokens") and estimate > rule["max_input_tokens"]:
                decisions.append(
                    _decide(
                        policy,
                        Point.MODEL_CALL,
                        Outcome.DENY,
                        f"The prompt (about {estimate} tokens) is over the "
                        f"{rule['max_input_tokens']} input tokens allowed by {_label(policy)}.",
                        input_tokens_estimate=estimate,
                    )
                )
            elif max_tokens is None or max_tokens > limit:
                asked = "no limit" if max_tokens is None else f"{max_tokens} tokens"
                if rule.get("action", "clamp") == "deny":
                    decisions.append(
                        _decide(
                            policy,
                            Point.MODEL_CALL,
                            Outcome.DENY,
                            f"The call asks for {asked}; {_label(policy)} allows at most "
                            f"{limit} per call.",
                            max_tokens=max_tokens,
                            limit=limit,
                        )
                    )
                else:
                    decision = _decide(
                        policy,
                        Point.MODEL_CALL,
                        Outcome.CLAMP,
                        f"max_tokens lowered from {asked} to {limit} by {_label(policy)}.",
                        max_tokens=max_tokens,
                        limit=limit,
                    )
                    decisions.append(decision)
                    if decision.outcome == Outcome.CLAMP:
                        max_tokens = limit
        elif policy.kind == K.MAX_COST_PER_RUN and run_cost is not None:
            limit_usd = rules.decimal_or_none(rule["max_cost_usd"]) or Decimal(0)
            if run_cost >= limit_usd:
                decisions.append(
                    _decide(
                        policy,
                        Point.MODEL_CALL,
                        Outcome.DENY,
                        f"The run has spent {run_cost:.6f} USD; {_label(policy)} allows at most "
                        f"{limit_usd} USD per run.",
                        run_cost=str(run_cost),
                        max_cost_usd=str(limit_usd),
                    )
                )
        if any(d.outcome == Outcome.DENY for d in decisions):
            break
    return decisions, max_tokens


def evaluate_tool_call(
    *,
    project_id: Any,
    tool_name: str,
    approved: bool = False,
    policies: list[Policy] | None = None,
) -> list[Decision]:
    decisions = []
    for policy in policies if policies is not None else policies_of(project_id, TOOL_KINDS):
        patterns = policy.rule["tools"]
        hit = rules.matches_any(tool_name, patterns)
        if policy.kind == K.TOOL_ALLOWLIST and hit is None:
            decisions.append(
                _decide(
                    policy,
                    Point.TOOL_CALL,
                    Outcome.DENY,
                    f"Tool '{tool_name}' is not in the allowlist of {_label(policy)}.",
                    tool=tool_name,
                )
            )
        elif policy.kind == K.TOOL_DENYLIST and hit is not None:
            decisions.append(
                _decide(
                    policy,
                    Point.TOOL_CALL,
                    Outcome.DENY,
                    f"Tool '{tool_name}' is denied by {_label(policy)} (pattern '{hit}').",
                    tool=tool_name,
                )
            )
        elif policy.kind == K.TOOL_REQUIRES_APPROVAL and hit is not None and not approved:
            decisions.append(
                _decide(
                    policy,
                    Point.TOOL_CALL,
                    Outcome.REQUIRE_APPROVAL,
                    f"Tool '{tool_name}' needs an approval under {_label(policy)}.",
                    tool=tool_name,
                )
            )
        if any(d.blocking for d in decisions):
            break
    return decisions


def scan_text(
    *, project_id: Any, target: str, point: str, text: str, policies: list[Policy] | None = None
) -> tuple[str, list[Decision]]:
    """Blocked patterns and PII over `text` (`target`: prompt, output or tool_arguments).
    Returns the text with enforced redactions applied, and the decisions. The matched text
    itself is never put in a decision."""
    decisions: list[Decision] = []
    if not text:
        return text, decisions
    for policy in policies if policies is not None else policies_of(project_id, CONTENT_KINDS):
        rule = policy.rule
        if target not in (rule.get("apply_to") or rules.CONTENT_TARGETS):
            continue
        what = {
            "prompt": "prompt",
            "output": "model output",
            "tool_arguments": "tool arguments",
            "tool_output": "tool output",
        }[target]
        if policy.kind == K.BLOCKED_PATTERNS:
            matches = rules.find_patterns(text, rules.compile_patterns(rule))
            if not matches:
                continue
            if rule.get("action", "deny") == "deny":
                decision = _decide(
                    policy,
                    point,
                    Outcome.DENY,
                    f"The {what} matches a pattern blocked by {_label(policy)}.",
                    target=target,
                    matches=len(matches),
                )
            else:
                decision = _decide(
                    policy,
                    point,
                    Outcome.REDACT,
                    f"{len(matches)} blocked pattern match(es) redacted from the {what} by "
                    f"{_label(policy)}.",
                    target=target,
                    matches=len(matches),
                )
                if decision.outcome == Outcome.REDACT:
                    text = rules.replace_spans(text, matches, rule.get("replacement", "[BLOCKED]"))
        else:  # PII
            matches = rules.find_pii(text, rule.get("detect"))
            if not matches:
                continue
            counts = rules.count_kinds(matches)
            found = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
            if rule.get("action", "redact") == "deny":
                decision = _decide(
                    policy,
                    point,
                    Outcome.DENY,
                    f"The {what} contains personal data ({found}); refused by {_label(policy)}.",
                    target=target,
                    found=counts,
                )
            else:
                decision = _decide(
                    policy,
                    point,
                    Outcome.REDACT,
                    f"Personal data redacted from the {what} by {_label(policy)}: {found}.",
                    target=target,
                    found=counts,
                )
                if decision.outcome == Outcome.REDACT:
                    text = rules.replace_spans(text, matches, rules.pii_placeholder)
        decisions.append(decision)
        if decision.outcome == Outcome.DENY:
            break
    return text, decisions


def scan_value(
    *, project_id: Any, target: str, point: str, value: Any, policies: list[Policy] | None = None
) -> tuple[Any, list[Decision]]:
    """`scan_text` over every string inside a JSON value (dict keys stay as they are); the
    decisions of the strings are merged per policy."""
    policies = policies if policies is not None else policies_of(project_id, CONTENT_KINDS)
    merged: dict[tuple[int, str], Decision] = {}

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            cleaned, found = scan_text(
                project_id=project_id, target=target, point=point, text=item, policies=policies
            )
            for decision in found:
                key = (decision.policy.pk if decision.policy else 0, decision.outcome)
                merged.setdefault(key, decision)
            return cleaned
        if isinstance(item, dict):
            return {key: walk(value) for key, value in item.items()}
        if isinstance(item, list | tuple):
            return [walk(value) for value in item]
        return item

    return walk(value), list(merged.values())


# --- recording -------------------------------------------------------------------------------

# Decisions of a refused run start: the refusal rolls back the transaction that wrote them,
# so they are kept here and written again (idempotently, by `key`) once it has ended — by the
# request middleware, after each Celery task, or `flush_refused()`.
_refused: contextvars.ContextVar[list[PolicyDecision] | None] = contextvars.ContextVar(
    "policies_refused", default=None
)
# Audit-mode decisions of a run start that went ahead: linked to the run (and logged as its
# events) as soon as the run's first event is written, in the same transaction.
_awaiting_run: contextvars.ContextVar[list[PolicyDecision] | None] = contextvars.ContextVar(
    "policies_awaiting_run", default=None
)


def _rows(
    decisions: list[Decision],
    *,
    project_id: Any,
    run_id: Any = None,
    workflow_id: Any = None,
    node_id: str = "",
    attempt: int | None = None,
) -> list[PolicyDecision]:
    return [
        PolicyDecision(
            project_id=project_id,
            policy=d.policy,
            budget=d.budget,
            source_name=d.name[:200],
            kind=d.kind,
            mode=d.mode,
            run_id=run_id,
            workflow_id=workflow_id,
            node_id=node_id,
            attempt=attempt,
            point=d.point,
            outcome=d.outcome,
            reason=d.reason,
            details=json.loads(json.dumps(d.details, default=str)),
        )
        for d in decisions
    ]


def _event(row: PolicyDecision) -> dict[str, Any]:
    from runs.models import RunEvent

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
    from runs.services.events import events_append

    run = run if run is not None else step.run
    rows = _rows(
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


def flush_refused() -> int:
    """Write again the decisions of refused run starts (a no-op for those that survived)."""
    pending = _refused.get()
    if not pending or (connection.in_atomic_block and connection.needs_rollback):
        return 0
    _refused.set(None)
    fresh = [
        PolicyDecision(
            **{
                f.attname: getattr(row, f.attname)
                for f in PolicyDecision._meta.concrete_fields
                if f.attname != "id"
            }
        )
        for row in pending
    ]
    PolicyDecision.objects.bulk_create(fresh, ignore_conflicts=True)
    return len(fresh)


def clear_pending() -> None:
    """Forget what a finished request or task left behind (after `flush_refused`)."""
    _refused.set(None)
    _awaiting_run.set(None)


def link_run_start_decisions(run_id: Any, events: list[Any]) -> None:
    """`events_appended` receiver side: a new run's first event links the audit-mode decisions
    of its run start to it and logs them as its events."""
    pending = _awaiting_run.get()
    if not pending or not events or events[0].seq != 1:
        return
    _awaiting_run.set(None)
    from runs.models import Run
    from runs.services.events import events_append

    run = Run.objects.filter(pk=run_id).values("project_id", "workflow_id").first()
    if run is None:
        return
    # Rows of a run start whose transaction rolled back after all are gone: skip them.
    alive = set(
        PolicyDecision.objects.filter(
            pk__in=[row.pk for row in pending if row.workflow_id == run["workflow_id"]],
            run__isnull=True,
        ).values_list("pk", flat=True)
    )
    mine = [row for row in pending if row.pk in alive]
    if not mine:
        return
    PolicyDecision.objects.filter(pk__in=[row.pk for row in mine]).update(run_id=run_id)
    events_append(run_id, [_event(row) for row in mine])


# --- what the engine calls -------------------------------------------------------------------


def _agent_ids_of(workflow: Any) -> list[int]:
    from agents.models import Agent

    definition = workflow.definition if isinstance(workflow.definition, dict) else {}
    slugs = {
        str(node.get("agent"))
        for node in definition.get("nodes") or []
        if isinstance(node, dict) and node.get("type") == "agent"
    }
    if not slugs:
        return []
    return list(
        Agent.objects.filter(project_id=workflow.project_id, slug__in=slugs).values_list(
            "pk", flat=True
        )
    )


def _budget_dict(budget: Budget) -> dict[str, Any]:
    return {"id": budget.pk, "name": budget.name, "limit_usd": str(budget.limit_usd)}


def _policy_dict(policy: Policy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {"id": policy.pk, "name": policy.name, "kind": policy.kind}


def check_run_start(*, workflow: Any, input: dict[str, Any], actor: Any) -> None:
    """Refuse the run (409 naming the policy, 402 naming the budget) or let it start. Runs
    inside run_create's transaction, before the run row is written."""
    from projects.models import Project

    _awaiting_run.set(None)
    project = workflow.project
    policies = policies_of(project.pk, RUN_START_KINDS)
    if any(p.kind == K.MAX_CONCURRENT_RUNS and p.mode == Policy.Mode.ENFORCE for p in policies):
        # Serialise run starts of the project, so two cannot both pass the count.
        Project.objects.select_for_update().filter(pk=project.pk).values_list("pk").first()
    decisions = evaluate_run_start(project=project, policies=policies)
    refusal: SparkOpsError | None = None
    blocking = next((d for d in decisions if d.blocking), None)
    if blocking is not None:
        refusal = Conflict(
            blocking.reason,
            error_type="policy_denied",
            extra={"policy": _policy_dict(blocking.policy)},
        )
    else:
        exhausted = budget_check(
            project=project, workflow_id=workflow.pk, agent_ids=_agent_ids_of(workflow)
        )
        if exhausted is not None:
            decisions.append(
                Decision(
                    Point.RUN_START,
                    Outcome.DENY,
                    f"Run refused: {exhausted.message}",
                    budget=exhausted.budget,
                    details={"spent": str(exhausted.spent)},
                )
            )
            refusal = SparkOpsError(
                f"Run refused: {exhausted.message}",
                status_code=402,
                error_type="budget_exceeded",
                extra={"budget": _budget_dict(exhausted.budget)},
            )
    if not decisions:
        return
    rows = _rows(decisions, project_id=project.pk, workflow_id=workflow.pk)
    PolicyDecision.objects.bulk_create(rows)
    if refusal is not None:
        _refused.set([*(_refused.get() or []), *rows])
        logger.info(
            "run start refused",
            extra={
                "project_id": str(project.pk),
                "workflow": workflow.pk,
                "reason": refusal.detail,
            },
        )
        raise refusal
    _awaiting_run.set(rows)


def _refuse(decision: Decision) -> None:
    from runs.services.steps import StepError

    if decision.budget is not None:
        raise StepError("budget_exceeded", decision.reason, budget=_budget_dict(decision.budget))
    error_type = (
        "approval_required" if decision.outcome == Outcome.REQUIRE_APPROVAL else ("policy_denied")
    )
    raise StepError(error_type, decision.reason, policy=_policy_dict(decision.policy))


def _settle(decisions: list[Decision], step: Any) -> None:
    record(decisions, step=step)
    blocking = next((d for d in decisions if d.blocking), None)
    if blocking is not None:
        _refuse(blocking)


def check_prompt(*, step: Any, agent: Any, text: str) -> str:
    cleaned, decisions = scan_text(
        project_id=step.run.project_id, target="prompt", point=Point.PROMPT, text=text
    )
    _settle(decisions, step)
    return cleaned


def check_model_call(*, step: Any, agent: Any, request: Any) -> None:
    """Allowed models, tokens per call, cost per run and `block` budgets; tool results that
    came back since the last call are scanned as prompt (in place)."""
    from runs.models import Run

    run = step.run
    content_policies = None
    decisions: list[Decision] = []
    for message in request.messages:
        if message.role != "tool" or getattr(message, "_policy_checked", False):
            continue
        if content_policies is None:
            content_policies = policies_of(run.project_id, CONTENT_KINDS)
        message.content, found = scan_text(
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
    policies = policies_of(run.project_id, MODEL_CALL_KINDS)
    run_cost = None
    if any(p.kind == K.MAX_COST_PER_RUN for p in policies):
        run_cost = Run.objects.filter(pk=run.pk).values_list("cost", flat=True).first()
    prompt = "".join(m.content or "" for m in request.messages)
    found, max_tokens = evaluate_model_call(
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
        exhausted = budget_check(
            project=run.project, workflow_id=run.workflow_id, agent_ids=[agent.pk]
        )
        if exhausted is not None:
            decisions.append(
                Decision(
                    Point.MODEL_CALL,
                    Outcome.DENY,
                    f"Model call refused: {exhausted.message}",
                    budget=exhausted.budget,
                    details={"spent": str(exhausted.spent)},
                )
            )
    _settle(decisions, step)


def check_model_output(*, step: Any, agent: Any, content: str | None) -> str | None:
    if not content:
        return content
    cleaned, decisions = scan_text(
        project_id=step.run.project_id, target="output", point=Point.MODEL_OUTPUT, text=content
    )
    _settle(decisions, step)
    return cleaned


def check_tool_call(
    *, step: Any, tool: Any, arguments: Any, call_approved: bool | None = None
) -> Any:
    """Allow/deny lists and approvals, then content rules over the arguments; returns the
    arguments to use (redacted where a policy says so).

    `call_approved` is given for a call a model made in an agent loop: whether a person
    approved that very call (approval is per call, not per step). Held, it raises
    ToolApprovalRequired once its decision is recorded, and the loop pauses. A tool step's own
    call is approved by the decision on the step (the planner held it before it ran)."""
    from runs.services.policy_hooks import ToolApprovalRequired

    project_id = step.run.project_id
    if call_approved is None:
        approved = step.decided_at is not None and step.status != "failed"
    else:
        approved = call_approved
    decisions = evaluate_tool_call(project_id=project_id, tool_name=tool.name, approved=approved)
    held = next((d for d in decisions if d.blocking), None)
    if held is not None and held.outcome == Outcome.REQUIRE_APPROVAL and call_approved is not None:
        # Content rules first: arguments they refuse fail the step now, not after an approval,
        # and the person approves the arguments the tool will get, redacted as they say (the
        # loop saves and resumes with those, so the redaction is recorded here, once).
        arguments, found = scan_value(
            project_id=project_id, target="tool_arguments", point=Point.TOOL_CALL, value=arguments
        )
        _settle(found, step)
        record(decisions, step=step)
        raise ToolApprovalRequired(
            held.reason, arguments=arguments, policy=_policy_dict(held.policy)
        )
    if not any(d.blocking for d in decisions):
        arguments, found = scan_value(
            project_id=project_id,
            target="tool_arguments",
            point=Point.TOOL_CALL,
            value=arguments,
        )
        decisions += found
    _settle(decisions, step)
    return arguments


def check_tool_result(*, step: Any, tool: Any, output: Any) -> Any:
    """Content rules over a tool's output, before it is recorded (step output, tool.call
    event) or fed back to a model."""
    output, decisions = scan_value(
        project_id=step.run.project_id, target="tool_output", point=Point.TOOL_CALL, value=output
    )
    _settle(decisions, step)
    return output


def pause_for_approval(*, run: Any, node_id: str, tool_name: str) -> str | None:
    """For the planner, when a tool node is ready: the reason it must wait for an approval
    before it is queued (an enforced `tool_requires_approval` policy names the tool), recorded
    as a `require_approval` decision; None to queue it. Approving the step must then queue it
    (with `decided_at` set, `check_tool_call` lets the approved call through)."""
    found = [
        d
        for d in evaluate_tool_call(project_id=run.project_id, tool_name=tool_name)
        if d.outcome == Outcome.REQUIRE_APPROVAL
    ]
    if not found:
        return None
    record(found[:1], run=run, node_id=node_id)
    return found[0].reason


# --- dry run ---------------------------------------------------------------------------------


def evaluate(
    *,
    project: Any,
    point: str,
    provider: str = "",
    model: str = "",
    max_tokens: int | None = None,
    text: str = "",
    tool: str = "",
    arguments: Any = None,
    run_cost: Decimal | None = None,
    workflow: Any = None,
    agent: Any = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """What the project's policies (and `block` budgets) would decide for a sample input at
    `point`. Records nothing."""
    decisions: list[Decision] = []
    result: dict[str, Any] = {}
    if point == Point.RUN_START:
        decisions = evaluate_run_start(project=project, at=at)
        agent_ids = _agent_ids_of(workflow) if workflow is not None else None
        exhausted = budget_check(
            project=project,
            workflow_id=workflow.pk if workflow is not None else None,
            agent_ids=agent_ids,
            at=at,
        )
        if exhausted is not None:
            decisions.append(_budget_decision(point, exhausted))
    elif point == Point.MODEL_CALL:
        decisions, result["max_tokens"] = evaluate_model_call(
            project_id=project.pk,
            provider=provider,
            model=model,
            max_tokens=max_tokens,
            input_text=text,
            run_cost=run_cost,
        )
        exhausted = budget_check(
            project=project,
            workflow_id=workflow.pk if workflow is not None else None,
            agent_ids=[agent.pk] if agent is not None else None,
            at=at,
        )
        if exhausted is not None:
            decisions.append(_budget_decision(point, exhausted))
    elif point == Point.TOOL_CALL:
        decisions = evaluate_tool_call(project_id=project.pk, tool_name=tool)
        if arguments is not None:
            result["arguments"], found = scan_value(
                project_id=project.pk, target="tool_arguments", point=point, value=arguments
            )
            decisions += found
    elif point in (Point.PROMPT, Point.MODEL_OUTPUT):
        target = "prompt" if point == Point.PROMPT else "output"
        result["text"], decisions = scan_text(
            project_id=project.pk, target=target, point=point, text=text
        )
    result["allowed"] = not any(d.blocking for d in decisions)
    result["decisions"] = [d.as_dict() for d in decisions]
    return result


def _budget_decision(point: str, exhausted: Any) -> Decision:
    return Decision(
        point,
        Outcome.DENY,
        exhausted.message,
        budget=exhausted.budget,
        details={"spent": str(exhausted.spent)},
    )
