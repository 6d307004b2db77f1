"""Budgets without a worker: charging through the engine's real charging path
(runs.services.usage.usage_record, which is what the agent loop calls), exactly once, the
threshold and limit events, period roll-over with a frozen "now", and run starts refused."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from policies.budgets import budget_add, budget_check, spent
from policies.models import BudgetSpend, PolicyDecision, UsageRecord
from policies.tests.factories import agent_workflow, make_agent, make_budget
from runs import services
from runs.models import Run, RunEvent, RunStep
from runs.services import attempts, usage
from runs.tests.conftest import sends_lost
from runs.tests.factories import make_workflow, transform
from sparkops.errors import SparkOpsError

pytestmark = pytest.mark.django_db


def running_step(cast, workflow=None):
    """A run of `workflow` whose agent step is running attempt 1 (as a worker would hold it)."""
    workflow = workflow or agent_workflow(cast)
    with sends_lost():
        run = services.run_create(workflow=workflow, input={"topic": "x"}, actor=cast.owner)
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(status="running", started_at=now, queued_at=now)
    RunStep.objects.filter(run=run).update(
        status="running", attempt=1, started_at=now, heartbeat_at=now
    )
    return RunStep.objects.select_related("run__version", "run__project").get(run=run)


def charge(step, cost, attempt=1):
    usage.usage_record(
        step=step,
        attempt=attempt,
        input_tokens=10,
        output_tokens=5,
        cost=Decimal(cost),
        event={
            "type": RunEvent.Type.LLM_CALL,
            "payload": {"provider": "simulated", "model": "sim-priced", "price_unknown": False},
        },
    )


def make_agent_named(cast, slug):
    from agents import services as agent_services

    return agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name=slug,
        slug=slug,
        provider="simulated",
        model="sim-1",
    )


def spend_of(budget):
    return spent(budget)


def test_each_call_is_charged_once_to_every_budget_covering_it(cast):
    agent = make_agent(cast)
    workflow = agent_workflow(cast)
    other_agent = make_agent_named(cast, "other")
    other_workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="other")
    covering = [
        make_budget(cast.project, cast.owner, name="project"),
        make_budget(cast.project, cast.owner, name="workflow", workflow=workflow.pk),
        make_budget(cast.project, cast.owner, name="agent", agent=agent.pk),
        make_budget(cast.project, cast.owner, name="both", workflow=workflow.pk, agent=agent.pk),
        make_budget(cast.project, cast.owner, name="notify", action="notify"),
    ]
    elsewhere = [
        make_budget(cast.project, cast.owner, name="other wf", workflow=other_workflow.pk),
        make_budget(cast.project, cast.owner, name="other agent", agent=other_agent.pk),
        make_budget(cast.other_project, cast.outsider, name="other project"),
        make_budget(cast.project, cast.owner, name="disabled", enabled=False),
    ]
    step = running_step(cast, workflow)
    charge(step, "0.25")
    charge(step, "0.125")
    for budget in covering:
        assert spend_of(budget) == Decimal("0.375"), budget.name
        assert BudgetSpend.objects.get(budget=budget).calls == 2
    for budget in elsewhere:
        assert spend_of(budget) == 0, budget.name
    (first, second) = UsageRecord.objects.order_by("id")
    assert (first.cost, second.cost) == (Decimal("0.25"), Decimal("0.125"))
    assert first.agent_id == agent.pk and first.workflow_id == workflow.pk
    assert (first.provider, first.model, first.node_id, first.attempt) == (
        "simulated",
        "sim-priced",
        "think",
        1,
    )


def test_a_redelivered_completion_does_not_double_charge(cast):
    make_agent(cast)
    budget = make_budget(cast.project, cast.owner)
    step = running_step(cast)
    charge(step, "0.25")
    assert attempts.step_succeed(step=step, attempt=1, output={"text": "ok"}) is True
    # The same attempt delivered again: its charge is refused by the attempt fence.
    with pytest.raises(services.StepSuperseded):
        charge(step, "0.25")
    assert spend_of(budget) == Decimal("0.25")
    assert UsageRecord.objects.count() == 1
    assert Run.objects.get(pk=step.run_id).cost == Decimal("0.25")


def test_a_superseded_attempt_charges_nothing(cast):
    make_agent(cast)
    budget = make_budget(cast.project, cast.owner)
    step = running_step(cast)
    charge(step, "0.25")
    assert attempts.step_recover(step_id=step.pk, attempt=1, reason="test") is True
    with pytest.raises(services.StepSuperseded):
        charge(step, "0.25", attempt=1)  # the lost worker comes back
    assert spend_of(budget) == Decimal("0.25")
    assert UsageRecord.objects.count() == 1


def test_threshold_and_limit_emit_one_event_each(cast):
    make_agent(cast)
    budget = make_budget(cast.project, cast.owner, limit="1.00", soft_threshold=50, name="Ops")
    step = running_step(cast)
    for _ in range(5):
        charge(step, "0.30")
    events = [
        e.payload
        for e in RunEvent.objects.filter(run_id=step.run_id, type="policy.decision").order_by("seq")
    ]
    assert [e["outcome"] for e in events] == ["budget_threshold", "budget_limit"]
    assert events[0]["spent"] == "0.600000" and events[0]["budget"] == budget.pk
    assert "passed 50%" in events[0]["reason"]
    assert events[1]["spent"] == "1.200000" and "refused" in events[1]["reason"]
    row = BudgetSpend.objects.get(budget=budget)
    assert row.threshold_crossed_at and row.limit_reached_at
    assert row.spend == Decimal("1.5")


def test_the_period_rolls_over_at_local_midnight(cast):
    cast.project.settings = {"timezone": "Europe/Paris"}
    cast.project.save(update_fields=["settings"])
    budget = make_budget(cast.project, cast.owner, limit="0.50", period="daily")
    before = datetime.fromisoformat("2025-01-06T22:59:00+00:00")  # 23:59 in Paris
    after = datetime.fromisoformat("2025-01-06T23:01:00+00:00")  # 00:01 the next day
    budget_add(budget=budget, cost=Decimal("0.50"), at=before)
    assert spent(budget, before) == Decimal("0.5")
    assert spent(budget, after) == 0
    assert budget_check(project=cast.project, at=before).budget == budget
    assert budget_check(project=cast.project, at=after) is None
    budget_add(budget=budget, cost=Decimal("0.25"), at=after)
    assert spent(budget, after) == Decimal("0.25")
    assert BudgetSpend.objects.filter(budget=budget).count() == 2


def test_a_monthly_period_rolls_over_and_total_never_does(cast):
    monthly = make_budget(cast.project, cast.owner, name="m", period="monthly")
    total = make_budget(cast.project, cast.owner, name="t", period="total")
    jan = datetime.fromisoformat("2025-01-31T12:00:00+00:00")
    feb = datetime.fromisoformat("2025-02-01T12:00:00+00:00")
    for budget in (monthly, total):
        budget_add(budget=budget, cost=Decimal("0.4"), at=jan)
        budget_add(budget=budget, cost=Decimal("0.1"), at=feb)
    assert (spent(monthly, jan), spent(monthly, feb)) == (Decimal("0.4"), Decimal("0.1"))
    assert spent(total, feb) == Decimal("0.5")


def exhaust(budget):
    budget_add(budget=budget, cost=budget.limit_usd, at=timezone.now())


def test_an_exhausted_block_budget_refuses_new_runs_with_402(cast):
    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    budget = make_budget(cast.project, cast.owner, limit="0.01", name="Demo cap")
    exhaust(budget)
    response = cast.client("developer").post(
        f"/api/v1/workflows/{workflow.pk}/run", {"input": {}}, format="json"
    )
    assert response.status_code == 402, response.json()
    body = response.json()
    assert body["type"] == "budget_exceeded"
    assert "Budget 'Demo cap' is exhausted" in body["detail"]
    assert body["budget"] == {"id": budget.pk, "name": "Demo cap", "limit_usd": "0.010000"}
    assert not Run.objects.exists()
    # The refusal rolled its transaction back; the decision was written again after it.
    (decision,) = PolicyDecision.objects.all()
    assert (decision.budget_id, decision.point, decision.outcome, decision.run_id) == (
        budget.pk,
        "run_start",
        "deny",
        None,
    )
    assert decision.workflow_id == workflow.pk


def test_notify_and_disabled_budgets_refuse_nothing(cast):
    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    exhaust(make_budget(cast.project, cast.owner, name="n", action="notify"))
    exhaust(make_budget(cast.project, cast.owner, name="d", enabled=False))
    with sends_lost():
        services.run_create(workflow=workflow, input={}, actor=cast.owner)


def test_scoped_budgets_refuse_only_what_they_cover(cast):
    agent = make_agent(cast)
    with_agent = agent_workflow(cast)
    plain = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="plain")
    exhaust(make_budget(cast.project, cast.owner, name="agent", agent=agent.pk))
    with sends_lost():
        services.run_create(workflow=plain, input={}, actor=cast.owner)
    with pytest.raises(SparkOpsError) as exc:
        services.run_create(workflow=with_agent, input={"topic": "x"}, actor=cast.owner)
    assert exc.value.status_code == 402 and "'agent'" in exc.value.detail


def test_a_budget_created_mid_period_counts_the_spend_already_made(cast):
    agent = make_agent(cast)
    workflow = agent_workflow(cast)
    other_workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="other")
    step = running_step(cast, workflow)
    charge(step, "0.25")
    charge(step, "0.5")
    # Last month's spend is not this month's.
    UsageRecord.objects.filter(pk=UsageRecord.objects.order_by("id").first().pk).update(
        created_at=timezone.now() - timezone.timedelta(days=40)
    )
    project = make_budget(cast.project, cast.owner, limit="0.60", name="project")
    scoped = make_budget(cast.project, cast.owner, name="agent", agent=agent.pk)
    elsewhere = make_budget(cast.project, cast.owner, name="other", workflow=other_workflow.pk)
    total = make_budget(cast.project, cast.owner, name="total", period="total")
    assert spend_of(project) == Decimal("0.5")
    assert spend_of(scoped) == Decimal("0.5")
    assert spend_of(elsewhere) == 0
    assert spend_of(total) == Decimal("0.75")
    assert BudgetSpend.objects.get(budget=total).calls == 2
    # Further charges add to the seeded spend, and the limit it crosses refuses runs.
    charge(step, "0.125")
    assert spend_of(project) == Decimal("0.625")
    assert budget_check(project=cast.project, workflow_id=workflow.pk).budget == project


def test_rescoping_a_budget_recounts_the_current_period(cast):
    from policies import services as policy_services

    make_agent(cast)
    workflow = agent_workflow(cast)
    other_workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="other")
    budget = make_budget(cast.project, cast.owner, name="wf", workflow=other_workflow.pk)
    charge(running_step(cast, workflow), "0.25")
    assert spend_of(budget) == 0
    policy_services.budget_update(budget=budget, actor=cast.owner, workflow=workflow.pk)
    assert spend_of(budget) == Decimal("0.25")


def test_a_map_items_model_calls_count_for_its_agents_budget(cast):
    """An item of a `map` over an agent (`m[0]`) is that agent's call: its usage names the agent
    and the agent's budget is charged."""
    agent = make_agent(cast)
    budget = make_budget(cast.project, cast.owner, name="agent", agent=agent.pk)
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [
            {
                "id": "m",
                "type": "map",
                "items": [1, 2],
                "node": {"type": "agent", "agent": "bot", "prompt": "{{ item }}"},
            }
        ],
        name="mapped",
    )
    with sends_lost():
        run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(status="running", started_at=now, queued_at=now)
    item = RunStep.objects.create(
        run=run,
        node_id="m[0]",
        type="agent",
        status="running",
        attempt=1,
        item_index=0,
        started_at=now,
        heartbeat_at=now,
    )
    charge(RunStep.objects.select_related("run").get(pk=item.pk), "0.25")
    assert UsageRecord.objects.get().agent_id == agent.pk
    assert spend_of(budget) == Decimal("0.25")
