"""Budgets on the real worker: a running run is stopped before its next paid call, concurrent
runs racing past a limit overspend by at most one in-flight call per worker, and the demo's
acceptance: a $0.01 budget with the priced simulated agent blocks the third run."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command

from policies.models import BudgetSpend, PolicyDecision, UsageRecord
from policies.tests.factories import agent_workflow, looping_agent, make_budget, sim_priced
from runs import services
from runs.models import Run, RunEvent, RunStep
from sparkops.testing.engine import wait_for_run

pytestmark = pytest.mark.usefixtures("engine")

CALL = Decimal("0.003")  # one call of the looping agent: 1 * 1000/M + 1 * 2000/M


def test_a_running_run_stops_before_its_next_paid_call(cast):
    looping_agent(cast, calls=4)
    budget = make_budget(cast.project, cast.owner, limit="0.005", name="Tight")
    run = services.run_create(workflow=agent_workflow(cast), input={"topic": "x"}, actor=cast.owner)
    run = wait_for_run(run.pk)
    assert run.status == "failed"
    error = RunStep.objects.get(run=run).error
    assert error["type"] == "budget_exceeded"
    assert "Budget 'Tight' is exhausted" in error["message"]
    assert error["budget"]["id"] == budget.pk
    # calls 1 (0 spent) and 2 (0.003 spent) went out; call 3 (0.006 spent) did not
    assert RunEvent.objects.filter(run=run, type="llm.call").count() == 2
    assert BudgetSpend.objects.get(budget=budget).spend == 2 * CALL == run.cost
    decision = PolicyDecision.objects.get(run=run, budget=budget)
    assert (decision.point, decision.outcome, decision.node_id) == ("model_call", "deny", "think")
    outcomes = list(
        RunEvent.objects.filter(run=run, type="policy.decision").values_list(
            "payload__outcome", flat=True
        )
    )
    assert outcomes == ["budget_threshold", "budget_limit", "deny"]


def test_concurrent_runs_racing_past_a_limit_overspend_by_at_most_one_call_per_worker(cast, engine):
    workers = engine.concurrency  # threads of the in-process worker
    looping_agent(cast, calls=40)
    limit = Decimal("0.030")  # ten calls
    budget = make_budget(cast.project, cast.owner, limit=str(limit), name="Race")
    workflow = agent_workflow(cast)
    runs = [
        services.run_create(workflow=workflow, input={"topic": str(i)}, actor=cast.owner)
        for i in range(8)
    ]
    finished = [wait_for_run(run.pk, timeout=60) for run in runs]
    assert {run.status for run in finished} == {"failed"}
    errors = {RunStep.objects.get(run=run).error["type"] for run in finished}
    assert errors == {"budget_exceeded"}
    spend = BudgetSpend.objects.get(budget=budget).spend
    # Every worker may have passed the check just before the limit was reached: at most one
    # call each in flight past it.
    assert limit <= spend < limit + workers * CALL, (spend, workers)
    # ... and each call was charged exactly once, everywhere.
    assert spend == sum(run.cost for run in finished)
    assert spend == sum(UsageRecord.objects.values_list("cost", flat=True))
    assert spend == CALL * RunEvent.objects.filter(type="llm.call").count()


def test_demo_budget_of_one_cent_blocks_the_third_run(cast):
    """The priced simulated agent of `seed_demo` answers "A paid answer." (14 characters: 4
    output tokens by the simulated provider's len // 4 + 1 estimate) to the prompt "Hi" (2
    characters: 1 input token). At the seeded 1000 / 2000 USD per million input / output
    tokens, a run costs 1 * 0.001 + 4 * 0.002 = 0.009 USD: the first run starts at 0 spent,
    the second at 0.009 (< 0.01), the third at 0.018 and is refused."""
    from conftest import client_for
    from projects.models import Project
    from workflows import services as workflow_services

    call_command("seed_demo", stdout=io.StringIO())
    sim_priced()
    project = Project.objects.get(slug="demo")
    client = client_for(project.owner)
    workflow = workflow_services.workflow_create(
        actor=project.owner,
        project=project,
        name="Paid answer",
        definition={
            "nodes": [{"id": "answer", "type": "agent", "agent": "priced", "prompt": "Hi"}],
            "output": {"answer": "{{ steps.answer.output.text }}"},
        },
    )
    response = client.post(
        "/api/v1/budgets/",
        {"project": str(project.pk), "name": "Demo cap", "limit_usd": "0.01", "period": "daily"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    url = f"/api/v1/workflows/{workflow.pk}/run"
    for expected_spend in ("0.009000", "0.018000"):
        response = client.post(url, {"input": {}}, format="json")
        assert response.status_code == 201, response.json()
        run = wait_for_run(response.json()["id"])
        assert run.status == "succeeded", run.error
        assert run.output == {"answer": "A paid answer."}
        budget = client.get(f"/api/v1/budgets/{response_budget_id(client)}").json()
        assert budget["current"]["spent"] == expected_spend
    response = client.post(url, {"input": {}}, format="json")
    assert response.status_code == 402
    body = response.json()
    assert body["type"] == "budget_exceeded"
    assert body["detail"] == (
        "Run refused: Budget 'Demo cap' is exhausted: 0.018000 of 0.010000 USD spent this day."
    )
    assert Run.objects.filter(workflow=workflow).count() == 2


def response_budget_id(client):
    return client.get("/api/v1/budgets/").json()["results"][0]["id"]
