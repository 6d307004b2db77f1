"""The admin dashboard's figures against hand-computed values, its scoping, the page's query
count, and Celery's status without a worker or a broker."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.tests.factories import UserFactory
from projects.models import Role
from projects.tests.factories import MembershipFactory
from runs.models import Run, RunStep
from runs.tests.factories import make_workflow, transform
from sparkops.console import dashboard as figures

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 10, 15, 30, tzinfo=UTC)


def ago(**delta: Any) -> datetime:
    return NOW - timedelta(**delta)


def make_run(workflow, status, created, *, duration_ms=None, cost="0", **fields) -> Run:
    run = Run.objects.create(
        project=workflow.project,
        workflow=workflow,
        version=workflow.current_version,
        status=status,
        duration_ms=duration_ms,
        cost=Decimal(cost),
        **fields,
    )
    Run.objects.filter(pk=run.pk).update(created_at=created)  # auto_now_add, set afterwards
    return run


@pytest.fixture
def history(cast):
    """Nine runs in two projects; the expected figures are worked out in each test."""
    wf_a = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="wf-a")
    wf_b = make_workflow(cast.project, cast.owner, [transform("b", 1)], name="wf-b")
    wf_other = make_workflow(cast.other_project, cast.outsider, [transform("o", 1)], name="wf-o")
    make_run(wf_a, "succeeded", ago(minutes=10), duration_ms=1000, cost="0.50")
    make_run(wf_a, "failed", ago(minutes=50), duration_ms=3000, cost="0.25")
    make_run(wf_b, "succeeded", ago(hours=2, minutes=10), duration_ms=2000, cost="1.00")
    make_run(wf_b, "timed_out", ago(hours=2, minutes=20), duration_ms=8000)
    make_run(wf_a, "cancelled", ago(hours=3), duration_ms=500)
    make_run(wf_a, "succeeded", ago(days=2), duration_ms=4000, cost="2.00")
    make_run(wf_a, "succeeded", ago(days=40), duration_ms=100000, cost="9.00")  # too old
    waiting = make_run(wf_b, "waiting_approval", ago(minutes=5))
    RunStep.objects.create(run=waiting, node_id="b", type="approval", status="waiting_approval")
    make_run(wf_other, "succeeded", ago(hours=1), duration_ms=1500, cost="5.00")
    return {"a": wf_a, "b": wf_b, "other": wf_other}


def superuser():
    return UserFactory(is_staff=True, is_superuser=True)


def test_runs_per_hour_and_per_day_by_status(cast, history):
    runs = figures.scoped_runs(superuser())
    hourly = figures.runs_per_bucket(runs, now=NOW, unit="hour")
    assert len(hourly) == 24
    assert hourly[-1].start == datetime(2025, 3, 10, 15, tzinfo=UTC)
    counts = {b.start.hour: b.counts for b in hourly if b.counts}
    assert counts == {
        15: {"succeeded": 1, "waiting_approval": 1},  # 15:20 and 15:25
        14: {"failed": 1, "succeeded": 1},  # 14:40 (acme) and 14:30 (other project)
        13: {"succeeded": 1, "timed_out": 1},
        12: {"cancelled": 1},
    }
    daily = figures.runs_per_bucket(runs, now=NOW, unit="day")
    assert len(daily) == 30 and daily[-1].start == datetime(2025, 3, 10, tzinfo=UTC)
    per_day = {b.start.day: (b.total, b.cost) for b in daily if b.total}
    assert per_day == {10: (7, Decimal("6.75")), 8: (1, Decimal("2.00"))}


def test_totals_success_rate_and_percentiles(cast, history):
    runs = figures.scoped_runs(superuser())
    totals = figures.totals(runs, now=NOW)
    assert (totals.runs_24h, totals.runs_30d, totals.active) == (7, 8, 1)
    # Ended on their own in 24 h: 3 succeeded, 1 failed, 1 timed out (cancelled excluded).
    assert (totals.succeeded_24h, totals.ended_24h) == (3, 5)
    assert totals.success_rate_24h == pytest.approx(0.6)
    assert totals.success_rate_30d == pytest.approx(4 / 6)
    assert (totals.spend_24h, totals.spend_30d) == (Decimal("6.75"), Decimal("8.75"))
    # Durations in 30 days: 500 1000 1500 2000 3000 4000 8000 (n = 7).
    assert totals.timed_30d == 7
    percentiles = figures.duration_percentiles(runs, now=NOW, count=totals.timed_30d)
    assert percentiles == {0.5: 2000, 0.95: 8000}  # ranks ceil(3.5)=4 and ceil(6.65)=7


def test_spend_slowest_failing_and_waiting(cast, history):
    runs = figures.scoped_runs(superuser())
    spend = figures.spend_per_project(runs, now=NOW)
    assert [(r["project__name"], r["total"], r["runs"]) for r in spend] == [
        ("Other", Decimal("5.00"), 1),
        ("Acme", Decimal("3.75"), 7),
    ]
    slowest = figures.slowest_workflows(runs, now=NOW)
    assert [(r["workflow__name"], r["mean_ms"], r["max_ms"]) for r in slowest] == [
        ("wf-b", 5000, 8000),
        ("wf-a", 2125, 4000),
        ("wf-o", 1500, 1500),
    ]
    failing = figures.most_failing_workflows(runs, now=NOW)
    assert [(r["workflow__name"], r["failed"], r["ended"]) for r in failing] == [
        ("wf-a", 1, 3),
        ("wf-b", 1, 2),
    ]
    waiting = figures.waiting_for_approval(runs)
    assert [(r.workflow.name, r.waiting_node) for r in waiting] == [("wf-b", "b")]


def test_every_figure_filters_by_project_and_by_membership(cast, history):
    member = UserFactory(is_staff=True)
    MembershipFactory(project=cast.project, user=member, role=Role.VIEWER)
    for data in (
        figures.dashboard(superuser(), cast.project, now=NOW),
        figures.dashboard(member, None, now=NOW),
    ):
        assert (data["totals"].runs_24h, data["totals"].spend_30d) == (6, Decimal("3.75"))
        assert [r["project__name"] for r in data["spend_per_project"]] == ["Acme"]
        assert [r["workflow__name"] for r in data["slowest"]] == ["wf-b", "wf-a"]
        assert sum(b.total for b in data["hourly"]) == 6
        assert (data["p50_ms"], data["p95_ms"]) == (2000, 8000)  # 500 1000 2000 3000 4000 8000
    assert list(figures.visible_projects(member)) == [cast.project]
    other = figures.dashboard(superuser(), cast.other_project, now=NOW)
    assert other["totals"].runs_24h == 1 and other["waiting_count"] == 0


def test_stuck_runs_use_the_sweepers_criteria(cast, settings):
    settings.SPARKOPS_QUEUED_GRACE = 60
    settings.SPARKOPS_HEARTBEAT_TIMEOUT = 30
    now = timezone.now()
    wf = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    old, fresh = now - timedelta(minutes=5), now - timedelta(seconds=5)
    make_run(wf, "pending", old)  # never sent
    make_run(wf, "pending", fresh)  # just created: fine
    make_run(wf, "queued", old, queued_at=old)  # planning message lost
    make_run(wf, "queued", fresh, queued_at=fresh)
    idle = make_run(wf, "running", old, started_at=old)  # nothing in flight
    RunStep.objects.create(run=idle, node_id="a", type="transform", status="pending")
    silent = make_run(wf, "running", old, started_at=old)
    RunStep.objects.create(
        run=silent, node_id="a", type="transform", status="running", heartbeat_at=old
    )
    alive = make_run(wf, "running", old, started_at=old)
    RunStep.objects.create(
        run=alive, node_id="a", type="transform", status="running", heartbeat_at=now
    )
    lost = make_run(wf, "running", old, started_at=old)
    RunStep.objects.create(run=lost, node_id="a", type="transform", status="queued", queued_at=old)
    waiting_retry = make_run(wf, "running", old, started_at=old)
    RunStep.objects.create(
        run=waiting_retry,
        node_id="a",
        type="transform",
        status="queued",
        queued_at=old,
        next_attempt_at=now + timedelta(seconds=30),  # backoff: not lost
    )
    make_run(wf, "waiting_approval", old, deadline=old)  # past its deadline
    make_run(wf, "failed", old)
    runs = figures.scoped_runs(superuser())
    assert figures.stuck_runs(runs, now=now) == 6


def test_celery_status_without_a_broker_returns_quickly(settings):
    from celery import Celery

    settings.SPARKOPS_CONSOLE_INSPECT_TIMEOUT = 0.2
    unreachable = Celery("nowhere", broker="redis://127.0.0.1:1/7", set_as_current=False)
    unreachable.conf.broker_transport_options = {"socket_connect_timeout": 0.5}
    started = time.monotonic()
    status = figures.celery_status(unreachable)
    assert time.monotonic() - started < 5
    assert status["workers"] == [] and status["queues"] == []
    assert "broker" in status["errors"][0]


def test_celery_status_reports_queues_without_a_worker(settings):
    settings.SPARKOPS_CONSOLE_INSPECT_TIMEOUT = 0.2
    status = figures.celery_status()
    assert [q["name"] for q in status["queues"]] == ["orchestration", "steps"], status
    assert all(isinstance(q["depth"], int) for q in status["queues"])


def dashboard_page(client: Client) -> str:
    response = client.get("/admin/")
    assert response.status_code == 200
    return response.content.decode()


def test_dashboard_page_shows_the_figures_and_its_query_count_is_flat(
    cast, django_assert_num_queries, settings
):
    settings.SPARKOPS_CONSOLE_INSPECT_TIMEOUT = 0.1
    now = timezone.now()
    wf = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="wf-now")
    other = make_workflow(cast.other_project, cast.outsider, [transform("o", 1)], name="wf-o")
    make_run(wf, "succeeded", now - timedelta(minutes=5), duration_ms=1200, cost="0.30")
    make_run(other, "failed", now - timedelta(hours=3), duration_ms=900, cost="0.10")
    from policies.budgets import period_start
    from policies.models import Budget, BudgetSpend

    budget = Budget.objects.create(
        project=cast.project, name="cap", period="monthly", limit_usd="2.00", soft_threshold=80
    )
    BudgetSpend.objects.create(budget=budget, period_start=period_start(budget, now), spend="0.50")
    client = Client()
    client.force_login(superuser())
    html = dashboard_page(client)  # also fills the Celery status cache
    for marker in ('id="chart-hourly"', 'id="chart-daily"', 'id="chart-spend"', 'id="slowest"'):
        assert marker in html
    assert "wf-now" in html
    # the budget bar: 0.50 of 2.00 is 25 %, threshold marker at 80 %
    assert 'id="budget-bars"' in html
    assert '<rect class="spent" width="25.0"' in html and '<rect class="threshold" x="80"' in html
    assert "$0.5000 / $2.00" in html
    assert 'data-key="succeeded" data-value="1"' in html
    # session, user, projects for the filter, hourly, daily, totals, p50, p95, spend per
    # project, budgets, their spend rows, slowest, failing, waiting list, waiting count, stuck,
    # the admin log
    with django_assert_num_queries(17):
        dashboard_page(client)
    for i in range(20):
        make_run(wf, "failed", now - timedelta(hours=i), duration_ms=i, cost="0.01")
        make_run(other, "waiting_approval", now - timedelta(minutes=i))
    with django_assert_num_queries(17):
        dashboard_page(client)
    filtered = client.get("/admin/", {"project": str(cast.other_project.pk)}).content.decode()
    figures_part = filtered.split('id="workers"')[0]
    assert "wf-o" in figures_part and "wf-now" not in figures_part
