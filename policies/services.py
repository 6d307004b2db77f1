"""Writes for policies and budgets: validated (the admin forms call the same `*_clean`),
audited, and the only place these rows are saved."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction

from agents.models import Agent
from projects.models import Membership, Project, Role
from sparkops.audit import audit_record
from sparkops.errors import Conflict, Forbidden, InvalidInput
from sparkops.services import duplicate_as, object_update
from workflows.models import Workflow

from .budgets import budget_seed
from .models import Budget, Policy
from .rules import decimal_or_none, rule_errors

POLICY_FIELDS = Policy.EDITABLE_FIELDS
BUDGET_FIELDS = Budget.EDITABLE_FIELDS
MAX_LIMIT_USD = Decimal("100000000")


def _require_admin(actor: Any, project: Project | None, what: str) -> None:
    if actor is not None and getattr(actor, "is_staff", False):
        return
    if project is None:
        raise Forbidden(f"Only staff can create, change or delete global {what}.")
    if not Membership.objects.has_role(actor, project, Role.ADMIN):
        raise Forbidden(f"Only project admins can manage {what}.")


# --- policies --------------------------------------------------------------------------------


def policy_clean(*, values: dict[str, Any]) -> dict[str, Any]:
    """Check a complete policy (kind, mode, priority, rule against the kind's JSON Schema).
    Raises InvalidInput with every problem, keyed by field (`rule.<path>` inside the rule)."""
    clean = dict(values)
    errors: dict[str, list[str]] = {}
    name = clean.get("name")
    if not isinstance(name, str) or not name.strip():
        errors["name"] = ["This field is required."]
    else:
        clean["name"] = name.strip()[:200]
    if clean.get("kind") not in Policy.Kind.values:
        errors["kind"] = [f"Must be one of: {', '.join(Policy.Kind.values)}."]
    if clean.get("mode") not in Policy.Mode.values:
        errors["mode"] = [f"Must be one of: {', '.join(Policy.Mode.values)}."]
    priority = clean.get("priority")
    if not isinstance(priority, int) or isinstance(priority, bool):
        errors["priority"] = ["Must be an integer."]
    if not isinstance(clean.get("enabled"), bool):
        errors["enabled"] = ["Must be true or false."]
    if "kind" not in errors:
        errors.update(rule_errors(clean["kind"], clean.get("rule")))
    if errors:
        raise InvalidInput("Invalid policy.", errors=errors)
    return clean


def _policy_name_conflict() -> Conflict:
    return Conflict("A policy with this name already exists here.", errors={"name": ["Taken."]})


@transaction.atomic
def policy_create(*, actor: Any, project: Project | None, **fields: Any) -> Policy:
    _require_admin(actor, project, "policies")
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise InvalidInput(f"Cannot set {', '.join(sorted(unknown))}.")
    defaults = {"description": "", "mode": "enforce", "enabled": True, "priority": 100, "rule": {}}
    clean = policy_clean(values={**defaults, **fields})
    if Policy.objects.filter(project=project, name=clean["name"]).exists():
        raise _policy_name_conflict()
    with duplicate_as(_policy_name_conflict):
        policy = Policy.objects.create(project=project, created_by=actor, **clean)
    audit_record(actor=actor, project=project, action="policy.create", obj=policy, changes=clean)
    return policy


@transaction.atomic
def policy_update(*, policy: Policy, actor: Any, **fields: Any) -> Policy:
    _require_admin(actor, policy.project, "policies")
    unknown = set(fields) - set(POLICY_FIELDS)
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")

    def clean(locked: Policy) -> dict[str, Any]:
        values = {name: getattr(locked, name) for name in POLICY_FIELDS}
        cleaned = policy_clean(values={**values, **fields})
        if cleaned["name"] != locked.name and _taken(Policy, locked, cleaned["name"]):
            raise _policy_name_conflict()
        return cleaned

    update = object_update(policy, actor=actor, clean=clean, conflict=_policy_name_conflict)
    if update.changed:
        audit_record(
            actor=actor,
            project=policy.project,
            action="policy.update",
            obj=policy,
            changes=update.changed,
        )
    return policy


def _taken(model: Any, obj: Any, name: str) -> bool:
    """Whether another policy or budget of `obj`'s project (or another global one) has `name`."""
    return bool(model.objects.filter(project=obj.project, name=name).exclude(pk=obj.pk).exists())


@transaction.atomic
def policy_delete(*, policy: Policy, actor: Any) -> None:
    _require_admin(actor, policy.project, "policies")
    audit_record(actor=actor, project=policy.project, action="policy.delete", obj=policy)
    policy.delete()


# --- budgets ---------------------------------------------------------------------------------


def budget_clean(*, project: Project, values: dict[str, Any]) -> dict[str, Any]:
    """Check a complete budget: the scope belongs to the project, a positive limit, a threshold
    in percent. Raises InvalidInput keyed by field."""
    clean = dict(values)
    errors: dict[str, list[str]] = {}
    name = clean.get("name")
    if not isinstance(name, str) or not name.strip():
        errors["name"] = ["This field is required."]
    else:
        clean["name"] = name.strip()[:200]
    if clean.get("period") not in Budget.Period.values:
        errors["period"] = [f"Must be one of: {', '.join(Budget.Period.values)}."]
    if clean.get("action") not in Budget.Action.values:
        errors["action"] = [f"Must be one of: {', '.join(Budget.Action.values)}."]
    limit = decimal_or_none(clean.get("limit_usd"))
    if limit is None or limit <= 0 or limit >= MAX_LIMIT_USD:
        errors["limit_usd"] = ["Must be a positive amount of USD (below 100,000,000)."]
    else:
        clean["limit_usd"] = limit.quantize(Decimal("0.000001"))
    threshold = clean.get("soft_threshold")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= 100:
        errors["soft_threshold"] = ["Must be a whole percent from 1 to 100."]
    if not isinstance(clean.get("enabled"), bool):
        errors["enabled"] = ["Must be true or false."]
    for field, model in (("workflow", Workflow), ("agent", Agent)):
        value = clean.get(field)
        if value is None:
            continue
        pk = value.pk if isinstance(value, model) else value
        found = model.objects.filter(project=project, pk=pk).first() if pk else None
        if found is None:
            errors[field] = [f"No {field} {pk} in this project."]
        else:
            clean[field] = found
    if errors:
        raise InvalidInput("Invalid budget.", errors=errors)
    return clean


def _budget_name_conflict() -> Conflict:
    return Conflict(
        "A budget with this name already exists in the project.", errors={"name": ["Taken."]}
    )


def _budget_changes(clean: dict[str, Any], names: Any) -> dict[str, Any]:
    return {name: (clean[name].pk if hasattr(clean[name], "pk") else clean[name]) for name in names}


@transaction.atomic
def budget_create(*, actor: Any, project: Project, **fields: Any) -> Budget:
    _require_admin(actor, project, "budgets")
    unknown = set(fields) - set(BUDGET_FIELDS)
    if unknown:
        raise InvalidInput(f"Cannot set {', '.join(sorted(unknown))}.")
    defaults = {
        "workflow": None,
        "agent": None,
        "period": Budget.Period.MONTHLY,
        "soft_threshold": 80,
        "action": Budget.Action.BLOCK,
        "enabled": True,
    }
    clean = budget_clean(project=project, values={**defaults, **fields})
    if Budget.objects.filter(project=project, name=clean["name"]).exists():
        raise _budget_name_conflict()
    with duplicate_as(_budget_name_conflict):
        budget = Budget.objects.create(project=project, created_by=actor, **clean)
    budget_seed(budget=budget)
    audit_record(
        actor=actor,
        project=project,
        action="budget.create",
        obj=budget,
        changes=_budget_changes(clean, BUDGET_FIELDS),
    )
    return budget


@transaction.atomic
def budget_update(*, budget: Budget, actor: Any, **fields: Any) -> Budget:
    _require_admin(actor, budget.project, "budgets")
    unknown = set(fields) - set(BUDGET_FIELDS)
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")

    def clean(locked: Budget) -> dict[str, Any]:
        values = {name: getattr(locked, name) for name in BUDGET_FIELDS}
        cleaned = budget_clean(project=locked.project, values={**values, **fields})
        if cleaned["name"] != locked.name and _taken(Budget, locked, cleaned["name"]):
            raise _budget_name_conflict()
        return cleaned

    update = object_update(
        budget,
        actor=actor,
        clean=clean,
        conflict=_budget_name_conflict,
        lock=Budget.objects.select_for_update().select_related("project"),
    )
    if set(update.changed) & {"period", "workflow", "agent"}:
        budget_seed(budget=budget)  # the current period's spend under the new scope
    if update.changed:
        audit_record(
            actor=actor,
            project=budget.project,
            action="budget.update",
            obj=budget,
            changes=_budget_changes(update.cleaned, update.changed),
        )
    return budget


@transaction.atomic
def budget_delete(*, budget: Budget, actor: Any) -> None:
    _require_admin(actor, budget.project, "budgets")
    audit_record(actor=actor, project=budget.project, action="budget.delete", obj=budget)
    budget.delete()
