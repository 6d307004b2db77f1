"""The figures of the admin dashboard. Every figure is one aggregate query (GROUP BY in the
database, never a loop over runs in Python); the only Python loops walk the few aggregated
rows (24 hours, 30 days, a top ten). Everything is scoped like the API (`for_user`) unless the
operator is a superuser, and can be narrowed to one project.

Success rate counts runs that ended on their own: succeeded / (succeeded + failed + timed
out); a cancelled run was an operator's decision, not a failure. Percentiles are nearest-rank
(the k-th smallest duration, k = ceil(p·n)), read with ORDER BY … LIMIT 1 OFFSET k-1, which
every database supports (SQLite has no percentile function)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db.models import Avg, Count, Exists, Max, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from policies.budgets import period_start
from policies.models import Budget, BudgetSpend
from projects.models import Project
from runs.models import Run, RunStep
from sparkops.celery import app as celery_app

from .palette import RUN_STATUS_ORDER

HOURS = 24
DAYS = 30
TOP = 5
ENGINE_QUEUES = ("orchestration", "steps")
ENDED_ON_THEIR_OWN = (Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.TIMED_OUT)
FAILED = (Run.Status.FAILED, Run.Status.TIMED_OUT)


def visible_projects(user: Any) -> QuerySet[Project]:
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.for_user(user)


def scoped_runs(user: Any, project: Project | None = None) -> QuerySet[Run]:
    runs = Run.objects.all() if user.is_superuser else Run.objects.for_user(user)
    if project is not None:
        runs = runs.filter(project=project)
    return runs.order_by()  # no default ordering: it would join every GROUP BY


@dataclass
class Bucket:
    start: datetime
    counts: dict[str, int] = field(default_factory=dict)
    cost: Decimal = Decimal(0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def runs_per_bucket(runs: QuerySet[Run], *, now: datetime, unit: str) -> list[Bucket]:
    """Runs created per hour (last 24 h) or per day (last 30 days, UTC), by status, with their
    spend. One GROUP BY (bucket, status) query; empty buckets are filled in."""
    now = _utc(now)
    if unit == "hour":
        last = now.replace(minute=0, second=0, microsecond=0)
        starts = [last - timedelta(hours=i) for i in range(HOURS - 1, -1, -1)]
        trunc: TruncHour | TruncDay = TruncHour("created_at", tzinfo=UTC)
    else:
        last = now.replace(hour=0, minute=0, second=0, microsecond=0)
        starts = [last - timedelta(days=i) for i in range(DAYS - 1, -1, -1)]
        trunc = TruncDay("created_at", tzinfo=UTC)
    buckets = {start: Bucket(start) for start in starts}
    rows = (
        runs.filter(created_at__gte=starts[0])
        .annotate(bucket=trunc)
        .values("bucket", "status")
        .annotate(n=Count("pk"), cost=Sum("cost"))
    )
    for row in rows:
        bucket = buckets.get(_utc(row["bucket"]))
        if bucket is not None:
            bucket.counts[row["status"]] = row["n"]
            bucket.cost += row["cost"] or Decimal(0)
    return list(buckets.values())


@dataclass
class Totals:
    runs_24h: int
    runs_30d: int
    active: int
    ended_24h: int
    succeeded_24h: int
    ended_30d: int
    succeeded_30d: int
    timed_30d: int
    spend_24h: Decimal
    spend_30d: Decimal

    @staticmethod
    def rate(ok: int, ended: int) -> float | None:
        return ok / ended if ended else None

    @property
    def success_rate_24h(self) -> float | None:
        return self.rate(self.succeeded_24h, self.ended_24h)

    @property
    def success_rate_30d(self) -> float | None:
        return self.rate(self.succeeded_30d, self.ended_30d)


def totals(runs: QuerySet[Run], *, now: datetime) -> Totals:
    """The headline numbers, in one aggregate query."""
    day, month = now - timedelta(hours=24), now - timedelta(days=DAYS)
    recent_day, recent = Q(created_at__gte=day), Q(created_at__gte=month)
    ended, ok = Q(status__in=ENDED_ON_THEIR_OWN), Q(status=Run.Status.SUCCEEDED)
    timed = Q(status__in=Run.FINISHED_STATUSES, duration_ms__isnull=False)
    row = runs.filter(recent | Q(status__in=Run.ACTIVE_STATUSES)).aggregate(
        runs_24h=Count("pk", filter=recent_day),
        runs_30d=Count("pk", filter=recent),
        active=Count("pk", filter=Q(status__in=Run.ACTIVE_STATUSES)),
        ended_24h=Count("pk", filter=recent_day & ended),
        succeeded_24h=Count("pk", filter=recent_day & ok),
        ended_30d=Count("pk", filter=recent & ended),
        succeeded_30d=Count("pk", filter=recent & ok),
        timed_30d=Count("pk", filter=recent & timed),
        spend_24h=Sum("cost", filter=recent_day),
        spend_30d=Sum("cost", filter=recent),
    )
    row["spend_24h"] = row["spend_24h"] or Decimal(0)
    row["spend_30d"] = row["spend_30d"] or Decimal(0)
    return Totals(**row)


def duration_percentiles(
    runs: QuerySet[Run], *, now: datetime, count: int, ps: tuple[float, ...] = (0.5, 0.95)
) -> dict[float, int | None]:
    """Nearest-rank percentiles of the durations (ms) of runs finished in the last 30 days;
    `count` is how many there are (from `totals`). One LIMIT/OFFSET query per percentile."""
    timed = runs.filter(
        created_at__gte=now - timedelta(days=DAYS),
        status__in=Run.FINISHED_STATUSES,
        duration_ms__isnull=False,
    ).order_by("duration_ms")
    values: dict[float, int | None] = {}
    for p in ps:
        # Queried even when there is nothing to rank, so the page's query count is fixed.
        k = max(math.ceil(p * count), 1)
        found = list(timed.values_list("duration_ms", flat=True)[k - 1 : k])
        values[p] = found[0] if found else None
    return values


def spend_per_project(
    runs: QuerySet[Run], *, now: datetime, limit: int = 10
) -> list[Mapping[str, Any]]:
    return list(
        runs.filter(created_at__gte=now - timedelta(days=DAYS))
        .values("project_id", "project__name")
        .annotate(total=Sum("cost"), runs=Count("pk"))
        .filter(total__gt=0)
        .order_by("-total", "project__name")[:limit]
    )


def slowest_workflows(
    runs: QuerySet[Run], *, now: datetime, limit: int = TOP
) -> list[Mapping[str, Any]]:
    """Workflows by mean duration of their runs finished in the last 30 days."""
    return list(
        runs.filter(
            created_at__gte=now - timedelta(days=DAYS),
            status__in=Run.FINISHED_STATUSES,
            duration_ms__isnull=False,
        )
        .values("workflow_id", "workflow__name", "project__name")
        .annotate(mean_ms=Avg("duration_ms"), max_ms=Max("duration_ms"), runs=Count("pk"))
        .order_by("-mean_ms", "workflow__name")[:limit]
    )


def most_failing_workflows(
    runs: QuerySet[Run], *, now: datetime, limit: int = TOP
) -> list[dict[str, Any]]:
    """Workflows by failed (or timed out) runs in the last 30 days."""
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in runs.filter(created_at__gte=now - timedelta(days=DAYS))
        .values("workflow_id", "workflow__name", "project__name")
        .annotate(
            failed=Count("pk", filter=Q(status__in=FAILED)),
            ended=Count("pk", filter=Q(status__in=ENDED_ON_THEIR_OWN)),
        )
        .filter(failed__gt=0)
        .order_by("-failed", "workflow__name")[:limit]
    ]
    for row in rows:
        row["rate"] = row["failed"] / row["ended"] if row["ended"] else None
    return rows


def waiting_for_approval(runs: QuerySet[Run], *, limit: int = 10) -> list[Run]:
    """Oldest first, each with the node that waits (`waiting_node`)."""
    node = RunStep.objects.filter(
        run=OuterRef("pk"), status=RunStep.Status.WAITING_APPROVAL
    ).values("node_id")[:1]
    return list(
        runs.filter(status=Run.Status.WAITING_APPROVAL)
        .select_related("workflow", "project")
        .annotate(waiting_node=Subquery(node))
        .order_by("created_at")[:limit]
    )


def stuck_filter(now: datetime) -> Q:
    """What the sweeper (`runs.services.sweep`) would have to fix: runs never sent, queued or
    running with nothing in flight past the grace period, steps lost in the queue or with a
    silent heartbeat, runs past their deadline."""
    grace = now - timedelta(seconds=settings.SPARKOPS_QUEUED_GRACE)
    silent = now - timedelta(seconds=settings.SPARKOPS_HEARTBEAT_TIMEOUT)
    steps = RunStep.objects.filter(run=OuterRef("pk"))
    in_flight = steps.filter(
        status__in=[RunStep.Status.QUEUED, RunStep.Status.RUNNING, RunStep.Status.WAITING_APPROVAL]
    )
    silent_step = steps.filter(status=RunStep.Status.RUNNING, heartbeat_at__lt=silent)
    lost_step = steps.filter(status=RunStep.Status.QUEUED).filter(
        Q(next_attempt_at__isnull=True, queued_at__lt=grace) | Q(next_attempt_at__lt=grace)
    )
    return (
        Q(status=Run.Status.PENDING, created_at__lt=grace)
        | Q(status=Run.Status.QUEUED, queued_at__lt=grace)
        | (
            Q(status=Run.Status.RUNNING, started_at__lt=grace, cancel_requested=False)
            & ~Exists(in_flight)
        )
        | Q(status=Run.Status.RUNNING) & (Exists(silent_step) | Exists(lost_step))
        | Q(status__in=Run.ACTIVE_STATUSES, deadline__lt=now)
    )


def stuck_runs(runs: QuerySet[Run], *, now: datetime) -> int:
    return runs.filter(stuck_filter(now)).count()


# --- Celery: queue depth and workers ---------------------------------------------------------

CELERY_CACHE_KEY = "console:celery-status"
WORKERS_SEEN_KEY = "console:workers-seen"


def _inspect_timeout() -> float:
    return float(getattr(settings, "SPARKOPS_CONSOLE_INSPECT_TIMEOUT", 0.5))


def celery_status(app: Any = None) -> dict[str, Any]:
    """Queue depth per engine queue and the workers that answered a ping in the last minute.
    Cached for 10 s. The broker connection is tried once with a short timeout and the ping
    only goes out over a live connection, so a missing worker or broker costs about a second
    at most and never hangs the page."""
    cached = cache.get(CELERY_CACHE_KEY)
    if cached is not None:
        return cached
    if app is None:
        app = celery_app
    status: dict[str, Any] = {"queues": [], "workers": [], "errors": []}
    timeout = _inspect_timeout()
    now = time.time()
    seen: dict[str, float] = cache.get(WORKERS_SEEN_KEY) or {}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout * 4)
            for name in ENGINE_QUEUES:
                try:
                    depth = conn.default_channel.queue_declare(
                        queue=name, passive=True
                    ).message_count
                except Exception:  # the queue does not exist yet: nothing waits in it
                    depth = 0
                status["queues"].append({"name": name, "depth": depth})
            for reply in app.control.ping(timeout=timeout, connection=conn) or []:
                for name in reply:
                    seen[name] = now
    except Exception as exc:
        status["errors"].append(f"broker: {exc.__class__.__name__}: {exc}"[:300])
    seen = {name: at for name, at in seen.items() if now - at <= 60}
    cache.set(WORKERS_SEEN_KEY, seen, 120)
    status["workers"] = [
        {"name": name, "seconds_ago": round(now - at)} for name, at in sorted(seen.items())
    ]
    cache.set(CELERY_CACHE_KEY, status, 10)
    return status


# --- the page --------------------------------------------------------------------------------


def budget_bars(user: Any, project: Project | None = None, *, now: datetime) -> list[dict]:
    """Enabled budgets of the visible projects with their spend in the current period: two
    queries whatever the number of runs (budgets, then their spend rows)."""
    enabled = Budget.objects.filter(project__in=visible_projects(user), enabled=True)
    if project is not None:
        enabled = enabled.filter(project=project)
    budgets = list(enabled.select_related("project", "workflow", "agent").order_by("name")[:20])
    starts = {budget.pk: period_start(budget, now) for budget in budgets}
    spends = {
        (row.budget_id, row.period_start): row.spend
        for row in BudgetSpend.objects.filter(budget__in=budgets)
    }
    bars = []
    for budget in budgets:
        spend = spends.get((budget.pk, starts[budget.pk]), Decimal(0))
        limit = budget.limit_usd or Decimal(0)
        share = float(spend / limit * 100) if limit else 0.0
        bars.append(
            {
                "budget": budget,
                "spend": spend,
                "limit": limit,
                "share": min(share, 100.0),
                "over": bool(limit) and spend >= limit,
                "threshold": budget.soft_threshold,
                "scope": budget.workflow or budget.agent or budget.project,
            }
        )
    return bars


def dashboard(user: Any, project: Project | None = None, *, now: datetime | None = None) -> dict:
    """Everything the dashboard template shows (see the module docstring for definitions)."""
    now = now or timezone.now()
    runs = scoped_runs(user, project)
    hourly = runs_per_bucket(runs, now=now, unit="hour")
    daily = runs_per_bucket(runs, now=now, unit="day")
    head = totals(runs, now=now)
    percentiles = duration_percentiles(runs, now=now, count=head.timed_30d)
    waiting = waiting_for_approval(runs)
    return {
        "now": now,
        "totals": head,
        "hourly": hourly,
        "daily": daily,
        "p50_ms": percentiles[0.5],
        "p95_ms": percentiles[0.95],
        "spend_per_project": spend_per_project(runs, now=now),
        "budgets": budget_bars(user, project, now=now),
        "slowest": slowest_workflows(runs, now=now),
        "failing": most_failing_workflows(runs, now=now),
        "waiting": waiting,
        "waiting_count": runs.filter(status=Run.Status.WAITING_APPROVAL).count(),
        "stuck": stuck_runs(runs, now=now),
        "status_order": RUN_STATUS_ORDER,
    }
