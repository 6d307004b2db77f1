"""Budget periods, charging and spend.

Charging (`usage_charge`) runs inside the transaction of `runs.services.usage.usage_record`,
which charges the call to its step only while the step's attempt is current and running: a
redelivered or superseded attempt raises there before anything is charged, so each model call
is charged to its budgets exactly once. Spend rows are updated with `F()` (atomic, no lost
update between workers).

Concurrency bound: `budget_check` (before each model call) reads the committed spend without
a lock. Between that check and its charge a worker makes exactly one model call, so when many
workers race past a limit, the overspend is at most one call per worker that passed the check
while the spend was still under the limit: spend < limit + (number of concurrent workers *
largest single call cost). Holding a row lock from the check until the charge would tighten
that only by serialising every paid call of the project behind one lock for the duration of a
provider round-trip, so it is not done."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from .models import Budget, BudgetSpend, UsageRecord
from .rules import zone_or_none

logger = logging.getLogger(__name__)

TOTAL_PERIOD_START = datetime(2000, 1, 1, tzinfo=UTC)
ZERO = Decimal("0")


def project_zone(project: Any) -> ZoneInfo:
    """The project's timezone (`settings.timezone`), UTC when unset or unknown."""
    settings = getattr(project, "settings", None) or {}
    return zone_or_none(settings.get("timezone")) or ZoneInfo("UTC")


def period_bounds(period: str, zone: ZoneInfo, at: datetime) -> tuple[datetime, datetime | None]:
    """[start, end) of the period containing `at`, in `zone` (end None for `total`). Local
    midnight is resolved by the zone, so days across a DST change are 23 or 25 hours."""
    if period == Budget.Period.TOTAL:
        return TOTAL_PERIOD_START, None
    local = at.astimezone(zone)
    if period == Budget.Period.DAILY:
        first = local.date()
        following = first + timedelta(days=1)
    elif period == Budget.Period.MONTHLY:
        first = local.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"Unknown budget period {period!r}.")
    return _midnight(first, zone), _midnight(following, zone)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def period_start(budget: Budget, at: datetime | None = None) -> datetime:
    return period_bounds(budget.period, project_zone(budget.project), at or timezone.now())[0]


def spent(budget: Budget, at: datetime | None = None) -> Decimal:
    """What `budget` spent in the period containing `at` (now)."""
    value = (
        BudgetSpend.objects.filter(budget=budget, period_start=period_start(budget, at))
        .values_list("spend", flat=True)
        .first()
    )
    return value if value is not None else ZERO


def budget_seed(*, budget: Budget, at: datetime | None = None) -> Decimal:
    """Set the spend of the period containing `at` (now) to what the budget's scope already
    spent in it, from the usage records: a budget created (or re-scoped) mid-period starts
    from the real spend, not from zero. Call inside the transaction that writes the budget.

    A charge whose transaction was open while the budget was being written and commits after it
    can be missed (it neither saw the budget nor was seen by the sum): one call at most per
    worker in flight at that instant, the same bound as `budget_check`."""
    at = at or timezone.now()
    start, end = period_bounds(budget.period, project_zone(budget.project), at)
    records = UsageRecord.objects.filter(project_id=budget.project_id, created_at__gte=start)
    if end is not None:
        records = records.filter(created_at__lt=end)
    if budget.workflow_id is not None:
        records = records.filter(workflow_id=budget.workflow_id)
    if budget.agent_id is not None:
        records = records.filter(agent_id=budget.agent_id)
    totals = records.filter(cost__gt=0).aggregate(spend=Sum("cost"), calls=Count("pk"))
    spend = totals["spend"] or ZERO
    marks: dict[str, Any] = {"spend": spend, "calls": totals["calls"] or 0}
    marks["threshold_crossed_at"] = at if spend >= budget.threshold_usd else None
    marks["limit_reached_at"] = at if spend >= budget.limit_usd else None
    if spend:
        BudgetSpend.objects.update_or_create(budget=budget, period_start=start, defaults=marks)
    else:
        BudgetSpend.objects.filter(budget=budget, period_start=start).update(**marks)
    return spend


@dataclass(frozen=True)
class Exhausted:
    budget: Budget
    spent: Decimal

    @property
    def message(self) -> str:
        return (
            f"Budget '{self.budget.name}' is exhausted: {self.spent:.6f} of "
            f"{self.budget.limit_usd:.6f} USD spent this {_period_word(self.budget.period)}."
        )


def _period_word(period: str) -> str:
    return {"daily": "day", "monthly": "month"}.get(period, "budget (total)")


def budget_check(
    *, project: Any, workflow_id: Any = None, agent_ids: Any = None, at: datetime | None = None
) -> Exhausted | None:
    """The first exhausted `block` budget covering a charge of this project / workflow / any of
    `agent_ids` (None: charges of every agent), or None."""
    budgets = Budget.objects.filter(
        project=project, enabled=True, action=Budget.Action.BLOCK
    ).select_related("project")
    at = at or timezone.now()
    for budget in budgets:
        if budget.workflow_id is not None and budget.workflow_id != workflow_id:
            continue
        if (
            budget.agent_id is not None
            and agent_ids is not None
            and budget.agent_id not in set(agent_ids)
        ):
            continue
        amount = spent(budget, at)
        if amount >= budget.limit_usd:
            return Exhausted(budget, amount)
    return None


def usage_charge(
    *,
    run: Any,
    step: Any,
    cost: Decimal,
    input_tokens: int,
    output_tokens: int,
    agent_id: Any = None,
    provider: str = "",
    model: str = "",
    price_unknown: bool = False,
    at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Record one charged model call and add its cost to every budget covering it. Call inside
    the charging transaction. Returns the run events to append (threshold / limit crossings)."""
    at = at or timezone.now()
    UsageRecord.objects.create(
        project_id=run.project_id,
        run_id=run.pk,
        workflow_id=run.workflow_id,
        agent_id=agent_id,
        node_id=getattr(step, "node_id", "") or "",
        attempt=getattr(step, "attempt", None),
        provider=provider[:32],
        model=model[:200],
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=cost,
        price_unknown=price_unknown,
    )
    if not cost:
        return []
    budgets = Budget.objects.covering(
        project_id=run.project_id, workflow_id=run.workflow_id, agent_id=agent_id
    ).select_related("project")
    events = []
    for budget in budgets:
        crossing = budget_add(budget=budget, cost=Decimal(cost), at=at)
        events.extend(crossing)
    return events


def budget_add(*, budget: Budget, cost: Decimal, at: datetime) -> list[dict[str, Any]]:
    """Add `cost` to the budget's spend row of the period containing `at` (atomically) and
    return the events for a threshold or limit crossed by this very charge."""
    start = period_start(budget, at)
    with transaction.atomic():
        row, _ = BudgetSpend.objects.get_or_create(budget=budget, period_start=start)
        BudgetSpend.objects.filter(pk=row.pk).update(spend=F("spend") + cost, calls=F("calls") + 1)
        # Our UPDATE holds the row lock until commit: nobody else can move it in between.
        row.refresh_from_db(fields=["spend", "threshold_crossed_at", "limit_reached_at"])
    new = row.spend
    old = new - cost
    events = []
    marks: dict[str, Any] = {}
    threshold = budget.threshold_usd
    if old < threshold <= new and row.threshold_crossed_at is None:
        marks["threshold_crossed_at"] = at
        events.append(_crossing_event(budget, "budget_threshold", new, start))
    if old < budget.limit_usd <= new and row.limit_reached_at is None:
        marks["limit_reached_at"] = at
        events.append(_crossing_event(budget, "budget_limit", new, start))
    if marks:
        BudgetSpend.objects.filter(pk=row.pk).update(**marks)
    return events


def _crossing_event(budget: Budget, outcome: str, spend: Decimal, start: datetime) -> dict:
    limit = budget.limit_usd
    if outcome == "budget_threshold":
        reason = (
            f"Budget '{budget.name}' passed {budget.soft_threshold}% of its limit: "
            f"{spend:.6f} of {limit:.6f} USD."
        )
    else:
        then = (
            "further paid calls and new runs are refused"
            if budget.action == Budget.Action.BLOCK
            else "notify only; nothing is refused"
        )
        reason = f"Budget '{budget.name}' reached its limit of {limit:.6f} USD ({then})."
    return {
        "source": "budget",
        "budget": budget.pk,
        "name": budget.name,
        "outcome": outcome,
        "action": budget.action,
        "period": budget.period,
        "period_start": start.isoformat(),
        "spent": str(spend),
        "limit": str(limit),
        "soft_threshold": budget.soft_threshold,
        "reason": reason,
    }
