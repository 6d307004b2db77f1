"""Policy and budget evaluation at the engine's fixed points (DESIGN.md §7).

This module decides; it knows nothing of runs. `evaluate_*` and `scan_*` are pure decisions
over a project's enabled policies (its own and the global ones, lower priority numbers first)
and budgets; `decide_run_start` adds the budget check and the refusal a run start gets (409
naming the policy, 402 naming the budget); `decision_rows` turns decisions into the
`PolicyDecision` rows a caller writes. The dry-run endpoint calls `evaluate`. The engine
(`runs.services.policy_hooks`) turns decisions into step errors, approval pauses and run
events. Audit-mode policies record what they would have done and change nothing."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.utils import timezone

from agents.models import Agent
from projects.models import Project
from sparkops.db import select_models
from sparkops.errors import SparkOpsError

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
    key = str(project_id)
    if cache is None:
        applicable = applicable_policies(project_id)
    elif key in cache:
        applicable = cache[key]
    else:
        applicable = cache[key] = applicable_policies(project_id)
    return [policy for policy in applicable if policy.kind in kinds]


def applicable_policies(project_id: Any) -> list[Policy]:
    """`Policy.objects.applicable_to(project_id)`, as SQL written once (every step and model
    call reads it: sparkops.db.select_models)."""
    project = Policy._meta.get_field("project").get_db_prep_value(project_id, connection)
    return select_models(
        Policy,
        "enabled = %s AND (project_id = %s OR project_id IS NULL)",
        [True, project],
        order_by="priority, id",
    )


def _label(policy: Policy) -> str:
    scope = "global policy" if policy.is_global else "policy"
    return f"{scope} '{policy.name}'"


# --- pure evaluation ---------------------------------------------------------------------------


def evaluate_run_start(
    *,
    project: Any,
    active_runs: Callable[[], int],
    at: datetime | None = None,
    policies: list[Policy] | None = None,
) -> list[Decision]:
    """`active_runs` counts the project's runs that have not finished (asked only when a
    `max_concurrent_runs` policy applies)."""
    at = at or timezone.now()
    decisions = []
    for policy in policies if policies is not None else policies_of(project.pk, RUN_START_KINDS):
        rule = policy.rule
        if policy.kind == K.MAX_CONCURRENT_RUNS:
            active = active_runs()
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


# --- what a caller records ---------------------------------------------------------------


def decision_rows(
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


def agent_ids_of(workflow: Any) -> list[int]:
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


def budget_dict(budget: Budget) -> dict[str, Any]:
    return {"id": budget.pk, "name": budget.name, "limit_usd": str(budget.limit_usd)}


def policy_dict(policy: Policy | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {"id": policy.pk, "name": policy.name, "kind": policy.kind}


class RunStartRefused(SparkOpsError):
    """A run start an enforced policy (409 `policy_denied`) or an exhausted `block` budget
    (402 `budget_exceeded`) refuses. Its decisions are on record: raise it past the
    transaction that wrote them, not through it."""


def decide_run_start(
    *, workflow: Any, active_runs: Callable[[], int]
) -> tuple[list[Decision], RunStartRefused | None]:
    """The decisions of a run start (max concurrent runs, allowed hours, then `block` budgets)
    and the refusal it gets, if any: 409 `policy_denied` naming the policy, 402
    `budget_exceeded` naming the budget. Call inside the transaction that creates the run."""
    project = workflow.project
    policies = policies_of(project.pk, RUN_START_KINDS)
    if any(p.kind == K.MAX_CONCURRENT_RUNS and p.mode == Policy.Mode.ENFORCE for p in policies):
        # Serialise run starts of the project, so two cannot both pass the count.
        Project.objects.select_for_update().filter(pk=project.pk).values_list("pk").first()
    decisions = evaluate_run_start(project=project, active_runs=active_runs, policies=policies)
    blocking = next((d for d in decisions if d.blocking), None)
    if blocking is not None:
        refusal = RunStartRefused(
            blocking.reason,
            status_code=409,
            error_type="policy_denied",
            extra={"policy": policy_dict(blocking.policy)},
        )
        return decisions, refusal
    exhausted = budget_check(
        project=project, workflow_id=workflow.pk, agent_ids=agent_ids_of(workflow)
    )
    if exhausted is None:
        return decisions, None
    decisions.append(budget_decision(Point.RUN_START, exhausted, prefix="Run refused: "))
    refusal = RunStartRefused(
        f"Run refused: {exhausted.message}",
        status_code=402,
        error_type="budget_exceeded",
        extra={"budget": budget_dict(exhausted.budget)},
    )
    return decisions, refusal


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
    active_runs: Callable[[], int] = lambda: 0,
) -> dict[str, Any]:
    """What the project's policies (and `block` budgets) would decide for a sample input at
    `point` (`active_runs` counts the project's unfinished runs). Records nothing."""
    decisions: list[Decision] = []
    result: dict[str, Any] = {}
    if point == Point.RUN_START:
        decisions = evaluate_run_start(project=project, active_runs=active_runs, at=at)
        agent_ids = agent_ids_of(workflow) if workflow is not None else None
        exhausted = budget_check(
            project=project,
            workflow_id=workflow.pk if workflow is not None else None,
            agent_ids=agent_ids,
            at=at,
        )
        if exhausted is not None:
            decisions.append(budget_decision(point, exhausted))
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
            decisions.append(budget_decision(point, exhausted))
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


def budget_decision(point: str, exhausted: Any, *, prefix: str = "") -> Decision:
    """The decision of an exhausted `block` budget (`budget_check`'s answer)."""
    return Decision(
        point,
        Outcome.DENY,
        f"{prefix}{exhausted.message}",
        budget=exhausted.budget,
        details={"spent": str(exhausted.spent)},
    )
