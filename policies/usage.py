"""Spend reports: per-call usage rows aggregated per day (in the project's timezone), workflow,
agent or model. One aggregate query per grouping."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import Count, Max, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from sparkops.errors import InvalidInput

from .budgets import ZERO, period_bounds, project_zone, spent
from .models import Budget, UsageRecord

GROUPINGS = ("day", "workflow", "agent", "model")
MAX_RANGE_DAYS = 366


def _totals(rows: QuerySet[Any]) -> QuerySet[Any]:
    totals: QuerySet[Any] = rows.annotate(
        cost=Sum("cost"),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        calls=Count("id"),
    )
    return totals


def _row(key: Any, label: str, values: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "cost": values["cost"] or ZERO,
        "input_tokens": values["input_tokens"] or 0,
        "output_tokens": values["output_tokens"] or 0,
        "calls": values["calls"],
    }


def grouped(records: QuerySet[UsageRecord], group_by: str, zone: ZoneInfo) -> list[dict]:
    if group_by == "day":
        rows = _totals(
            records.annotate(day=TruncDate("created_at", tzinfo=zone)).values("day")
        ).order_by("day")
        return [_row(str(r["day"]), str(r["day"]), r) for r in rows]
    if group_by == "workflow":
        rows = _totals(records.values("workflow_id").annotate(name=Max("workflow__name"))).order_by(
            "-cost"
        )
        return [_row(r["workflow_id"], r["name"] or "(deleted)", r) for r in rows]
    if group_by == "agent":
        rows = _totals(records.values("agent_id").annotate(name=Max("agent__name"))).order_by(
            "-cost"
        )
        return [_row(r["agent_id"], r["name"] or "(none or deleted)", r) for r in rows]
    if group_by == "model":
        rows = _totals(records.values("provider", "model")).order_by("-cost")
        return [
            _row(f"{r['provider']}/{r['model']}", f"{r['provider']}/{r['model']}", r) for r in rows
        ]
    raise InvalidInput("Invalid input.", errors={"group_by": [f"One of: {', '.join(GROUPINGS)}."]})


def _total(records: QuerySet[UsageRecord]) -> dict[str, Any]:
    values = records.aggregate(
        cost=Sum("cost"),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        calls=Count("id"),
    )
    return {
        "cost": values["cost"] or ZERO,
        "input_tokens": values["input_tokens"] or 0,
        "output_tokens": values["output_tokens"] or 0,
        "calls": values["calls"],
    }


def _parse_day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput("Invalid input.", errors={name: ["A date as YYYY-MM-DD."]}) from None


def project_usage(
    *, project: Any, start: str | None, end: str | None, group_by: str | None
) -> dict[str, Any]:
    """Usage of `project` from `start` to `end` (dates, both included, in the project's
    timezone; default: the last 30 days), grouped by `group_by` (default: day)."""
    group_by = group_by or "day"
    if group_by not in GROUPINGS:
        raise InvalidInput(
            "Invalid input.", errors={"group_by": [f"One of: {', '.join(GROUPINGS)}."]}
        )
    zone = project_zone(project)
    today = timezone.now().astimezone(zone).date()
    last = _parse_day(end, "to") or today
    first = _parse_day(start, "from") or last - timedelta(days=29)
    if first > last:
        raise InvalidInput("Invalid input.", errors={"from": ["Must not be after `to`."]})
    if (last - first).days >= MAX_RANGE_DAYS:
        raise InvalidInput(
            "Invalid input.", errors={"from": [f"At most {MAX_RANGE_DAYS} days at once."]}
        )
    since = datetime(first.year, first.month, first.day, tzinfo=zone)
    following = last + timedelta(days=1)
    until = datetime(following.year, following.month, following.day, tzinfo=zone)
    records = UsageRecord.objects.filter(
        project=project, created_at__gte=since, created_at__lt=until
    )
    return {
        "project": project.pk,
        "from": first,
        "to": last,
        "timezone": str(zone),
        "group_by": group_by,
        "total": _total(records),
        "results": grouped(records, group_by, zone),
    }


def budget_usage(*, budget: Budget, at: datetime | None = None) -> dict[str, Any]:
    """The budget's current period: spend (from its spend row, the figure that blocks) and the
    breakdown of the calls it covers per day, workflow, agent and model."""
    zone = project_zone(budget.project)
    at = at or timezone.now()
    start, end = period_bounds(budget.period, zone, at)
    records = UsageRecord.objects.filter(
        project_id=budget.project_id, created_at__gte=max(start, budget.created_at)
    )
    if end is not None:
        records = records.filter(created_at__lt=end)
    if budget.workflow_id:
        records = records.filter(workflow_id=budget.workflow_id)
    if budget.agent_id:
        records = records.filter(agent_id=budget.agent_id)
    amount = spent(budget, at)
    return {
        "budget": budget.pk,
        "name": budget.name,
        "period": budget.period,
        "period_start": start if budget.period != Budget.Period.TOTAL else None,
        "period_end": end,
        "timezone": str(zone),
        "limit_usd": budget.limit_usd,
        "spent": amount,
        "remaining": max(budget.limit_usd - amount, ZERO),
        "percent_used": round(float(amount / budget.limit_usd * 100), 2),
        "by_day": grouped(records, "day", zone),
        "by_workflow": grouped(records, "workflow", zone),
        "by_agent": grouped(records, "agent", zone),
        "by_model": grouped(records, "model", zone),
    }
