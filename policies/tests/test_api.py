"""The policies, decisions, budgets, usage, evaluate and audit endpoints: roles, scoping,
validation (400 field errors per rule kind), payload shape and query counts."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.tests.factories import UserFactory
from conftest import client_for
from policies.budgets import budget_add
from policies.models import Budget, Policy, PolicyDecision, UsageRecord
from policies.tests.factories import agent_workflow, make_agent, make_budget, make_policy
from sparkops.audit import AuditEvent
from workflows.tests.factories import make_workflow, transform

pytestmark = pytest.mark.django_db

POLICIES = "/api/v1/policies/"
BUDGETS = "/api/v1/budgets/"
DECISIONS = "/api/v1/policy-decisions/"


def pii_body(cast, **extra):
    return {"project": str(cast.project.pk), "name": "No PII", "kind": "pii", "rule": {}, **extra}


# --- policies ----------------------------------------------------------------------------------


def test_admin_creates_a_policy(cast):
    response = cast.client("admin").post(
        POLICIES, pii_body(cast, rule={"action": "deny"}, mode="audit"), format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["kind"] == "pii" and body["mode"] == "audit" and body["is_global"] is False
    assert body["rule"] == {"action": "deny"} and body["priority"] == 100
    assert Policy.objects.get(pk=body["id"]).created_by == cast.admin


@pytest.mark.parametrize("who", ["developer", "viewer"])
def test_below_admin_cannot_create(cast, who):
    response = cast.client(who).post(POLICIES, pii_body(cast), format="json")
    assert response.status_code == 403
    assert not Policy.objects.exists()


def test_outsider_cannot_create_in_a_project_they_do_not_belong_to(cast):
    response = cast.client("outsider").post(POLICIES, pii_body(cast), format="json")
    assert response.status_code == 400
    assert "project" in response.json()["errors"]


@pytest.mark.parametrize(
    ("kind", "rule", "field"),
    [
        ("blocked_patterns", {"patterns": ["(oops"]}, "rule.patterns.0"),
        ("allowed_models", {"models": "gpt-4o"}, "rule.models"),
        ("max_tokens_per_call", {}, "rule"),
        ("pii", {"detect": ["ssn"]}, "rule.detect.0"),
        ("allowed_hours", {"windows": [{"start": "9", "end": "10:00"}]}, "rule.windows.0.start"),
    ],
)
def test_an_invalid_rule_is_a_400_with_field_errors(cast, kind, rule, field):
    response = cast.client("admin").post(
        POLICIES, pii_body(cast, kind=kind, rule=rule), format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "validation_error"
    assert field in body["errors"], body


def test_unknown_kind_is_a_400(cast):
    response = cast.client("admin").post(POLICIES, pii_body(cast, kind="magic"), format="json")
    assert response.status_code == 400
    assert "kind" in response.json()["errors"]


def test_duplicate_name_is_a_409(cast):
    make_policy(cast.project, cast.owner, "pii", {}, name="No PII")
    response = cast.client("admin").post(POLICIES, pii_body(cast), format="json")
    assert response.status_code == 409


def test_update_revalidates_the_rule_and_keeps_the_project(cast):
    policy = make_policy(cast.project, cast.owner, "pii", {})
    client = cast.client("admin")
    url = f"{POLICIES}{policy.pk}/"
    bad = client.patch(url, {"rule": {"action": "explode"}}, format="json")
    assert bad.status_code == 400 and "rule.action" in bad.json()["errors"]
    good = client.patch(
        url, {"rule": {"action": "deny"}, "project": str(cast.other_project.pk)}, format="json"
    )
    assert good.status_code == 200, good.json()
    assert good.json()["rule"] == {"action": "deny"}
    assert good.json()["project"] == str(cast.project.pk)
    kind = client.patch(url, {"kind": "tool_denylist"}, format="json")
    assert kind.status_code == 400 and "rule" in kind.json()["errors"]
    assert client.delete(url).status_code == 204
    assert not Policy.objects.exists()


def test_global_policies_are_staff_only_to_write_and_readable_by_all(cast):
    admin = cast.client("admin")
    body = {"project": None, "name": "Global PII", "kind": "pii", "rule": {}}
    assert admin.post(POLICIES, body, format="json").status_code == 403
    staff = client_for(UserFactory(is_staff=True))
    response = staff.post(POLICIES, body, format="json")
    assert response.status_code == 201, response.json()
    pk = response.json()["id"]
    assert response.json()["is_global"] is True
    outsider = cast.client("outsider")
    assert outsider.get(f"{POLICIES}{pk}/").status_code == 200
    assert outsider.patch(f"{POLICIES}{pk}/", {"enabled": False}, format="json").status_code == 403
    assert admin.delete(f"{POLICIES}{pk}/").status_code == 403
    assert staff.patch(f"{POLICIES}{pk}/", {"enabled": False}, format="json").status_code == 200
    ids = {p["id"] for p in outsider.get(POLICIES, {"is_global": "true"}).json()["results"]}
    assert ids == {pk}


def test_list_is_scoped_and_filterable(cast):
    mine = make_policy(cast.project, cast.owner, "pii", {}, name="mine", priority=5)
    make_policy(cast.project, cast.owner, "tool_denylist", {"tools": ["x"]}, name="deny")
    make_policy(cast.other_project, cast.outsider, "pii", {}, name="theirs")
    client = cast.client("viewer")
    body = client.get(POLICIES).json()
    assert [p["name"] for p in body["results"]] == ["mine", "deny"]
    assert [p["id"] for p in client.get(POLICIES, {"kind": "pii"}).json()["results"]] == [mine.pk]
    assert client.get(f"{POLICIES}?search=den").json()["count"] == 1


def test_policy_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    make_policy(cast.project, cast.owner, "pii", {}, name="p0")
    # auth user, count, page of policies (project joined)
    with django_assert_num_queries(3):
        assert client.get(POLICIES).status_code == 200
    for i in range(1, 10):
        make_policy(cast.project, cast.owner, "pii", {}, name=f"p{i}")
    with django_assert_num_queries(3):
        assert client.get(POLICIES).json()["count"] == 10


# --- decisions ---------------------------------------------------------------------------------


def decision(project, **fields):
    values = {
        "source_name": "p",
        "kind": "pii",
        "mode": "enforce",
        "point": "prompt",
        "outcome": "redact",
        "reason": "r",
    }
    return PolicyDecision.objects.create(project=project, **{**values, **fields})


def test_decisions_are_readable_by_members_and_scoped(cast):
    mine = decision(cast.project, outcome="deny")
    decision(cast.other_project)
    client = cast.client("viewer")
    body = client.get(DECISIONS).json()
    assert [d["id"] for d in body["results"]] == [mine.pk]
    assert body["results"][0]["outcome"] == "deny"
    assert client.get(DECISIONS, {"outcome": "redact"}).json()["results"] == []
    assert client.post(DECISIONS, {}, format="json").status_code == 405


def test_decision_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    decision(cast.project)
    # auth user, the caller's project ids, page of decisions (cursor pagination: no count)
    with django_assert_num_queries(3):
        assert client.get(DECISIONS).status_code == 200
    for _ in range(10):
        decision(cast.project)
    with django_assert_num_queries(3):
        assert len(client.get(DECISIONS).json()["results"]) == 11


# --- budgets -----------------------------------------------------------------------------------


def budget_body(cast, **extra):
    return {"project": str(cast.project.pk), "name": "Monthly", "limit_usd": "25.00", **extra}


def test_admin_creates_a_budget_with_defaults(cast):
    response = cast.client("admin").post(BUDGETS, budget_body(cast), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["period"] == "monthly" and body["action"] == "block"
    assert body["soft_threshold"] == 80 and body["limit_usd"] == "25.000000"
    assert body["workflow"] is None and body["agent"] is None
    assert body["current"]["spent"] == "0.000000" and body["current"]["state"] == "ok"


@pytest.mark.parametrize("who", ["developer", "viewer"])
def test_below_admin_cannot_create_a_budget(cast, who):
    assert cast.client(who).post(BUDGETS, budget_body(cast), format="json").status_code == 403


def test_budget_validation(cast):
    other = make_workflow(cast.other_project, cast.outsider, [transform("a", 1)])
    client = cast.client("admin")
    response = client.post(
        BUDGETS,
        budget_body(cast, limit_usd="0", soft_threshold=0, workflow=other.pk, period="weekly"),
        format="json",
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {"soft_threshold", "period"} <= set(errors)
    response = client.post(
        BUDGETS, budget_body(cast, limit_usd="0", workflow=other.pk), format="json"
    )
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"limit_usd", "workflow"}


def test_scoped_budget_and_update(cast):
    agent = make_agent(cast)
    workflow = agent_workflow(cast)
    client = cast.client("admin")
    response = client.post(
        BUDGETS, budget_body(cast, workflow=workflow.pk, agent=agent.pk), format="json"
    )
    assert response.status_code == 201, response.json()
    pk = response.json()["id"]
    assert (response.json()["workflow"], response.json()["agent"]) == (workflow.pk, agent.pk)
    response = client.patch(
        f"{BUDGETS}{pk}/", {"agent": None, "limit_usd": "30", "period": "daily"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["agent"] is None and response.json()["limit_usd"] == "30.000000"
    assert cast.client("developer").patch(f"{BUDGETS}{pk}/", {"enabled": False}).status_code == 403
    assert client.delete(f"{BUDGETS}{pk}/").status_code == 204
    assert not Budget.objects.exists()


def test_budget_list_shows_the_current_period_spend(cast):
    budget = make_budget(cast.project, cast.owner, limit="1.00")
    budget_add(budget=budget, cost=Decimal("0.85"), at=timezone.now())
    old = make_budget(cast.project, cast.owner, limit="1.00", name="Old", period="daily")
    budget_add(budget=old, cost=Decimal("5"), at=timezone.now() - timedelta(days=3))
    results = {b["name"]: b for b in cast.client("viewer").get(BUDGETS).json()["results"]}
    assert results["Budget"]["current"]["spent"] == "0.850000"
    assert results["Budget"]["current"]["state"] == "threshold"
    assert results["Budget"]["current"]["percent_used"] == 85.0
    assert results["Old"]["current"]["spent"] == "0.000000"  # an earlier day


def test_budget_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    make_budget(cast.project, cast.owner, name="b0")
    # auth user, count, page of budgets (project joined, latest spend row by subquery)
    with django_assert_num_queries(3):
        assert client.get(BUDGETS).status_code == 200
    for i in range(1, 10):
        budget = make_budget(cast.project, cast.owner, name=f"b{i}")
        budget_add(budget=budget, cost=Decimal("0.1"), at=timezone.now())
    with django_assert_num_queries(3):
        assert client.get(BUDGETS).json()["count"] == 10


# --- usage -------------------------------------------------------------------------------------


def usage(project, cost, *, workflow=None, agent=None, model="sim-priced", at=None):
    record = UsageRecord.objects.create(
        project=project,
        workflow=workflow,
        agent=agent,
        provider="simulated",
        model=model,
        input_tokens=10,
        output_tokens=5,
        cost=Decimal(cost),
    )
    if at is not None:
        UsageRecord.objects.filter(pk=record.pk).update(created_at=at)
    return record


def test_project_usage_grouped(cast):
    agent = make_agent(cast)
    workflow = agent_workflow(cast)
    today = timezone.now()
    usage(cast.project, "0.5", workflow=workflow, agent=agent, at=today)
    usage(cast.project, "0.25", workflow=workflow, agent=agent, model="other", at=today)
    usage(cast.project, "1", at=today - timedelta(days=2))
    usage(cast.project, "9", at=today - timedelta(days=60))  # outside the default 30 days
    usage(cast.other_project, "7", at=today)
    client = cast.client("viewer")
    url = f"/api/v1/projects/{cast.project.pk}/usage"
    body = client.get(url).json()
    assert body["group_by"] == "day" and body["total"]["cost"] == "1.750000"
    assert [row["cost"] for row in body["results"]] == ["1.000000", "0.750000"]
    assert body["results"][1]["key"] == today.date().isoformat()
    by_workflow = client.get(url, {"group_by": "workflow"}).json()["results"]
    assert [(r["key"], r["label"], r["cost"]) for r in by_workflow] == [
        (None, "(deleted)", "1.000000"),
        (workflow.pk, "wf", "0.750000"),
    ]
    by_agent = client.get(url, {"group_by": "agent"}).json()["results"]
    assert by_agent[1]["key"] == agent.pk and by_agent[1]["calls"] == 2
    by_model = client.get(url, {"group_by": "model"}).json()["results"]
    assert [r["key"] for r in by_model] == ["simulated/sim-priced", "simulated/other"]
    old = (today - timedelta(days=60)).date().isoformat()
    body = client.get(url, {"from": old, "to": old}).json()
    assert body["total"]["cost"] == "9.000000" and body["from"] == old


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2025-02-01", "to": "2025-01-01"}, "from"),
        ({"from": "2020-01-01", "to": "2025-01-01"}, "from"),
    ],
)
def test_project_usage_bad_parameters(cast, params, field):
    response = cast.client("viewer").get(f"/api/v1/projects/{cast.project.pk}/usage", params)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_project_usage_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    url = f"/api/v1/projects/{cast.project.pk}/usage"
    usage(cast.project, "1")
    # auth user, project, role, total, grouped rows
    with django_assert_num_queries(5):
        assert client.get(url).status_code == 200
    for _ in range(10):
        usage(cast.project, "1", at=timezone.now() - timedelta(days=3))
    with django_assert_num_queries(5):
        assert client.get(url).json()["total"]["calls"] == 11


def test_budget_usage(cast):
    agent = make_agent(cast)
    workflow = agent_workflow(cast)
    budget = make_budget(cast.project, cast.owner, limit="2", workflow=workflow.pk)
    budget_add(budget=budget, cost=Decimal("0.75"), at=timezone.now())
    usage(cast.project, "0.5", workflow=workflow, agent=agent)
    usage(cast.project, "0.25", workflow=workflow, agent=agent, model="other")
    usage(cast.project, "3")  # not this budget's workflow
    body = cast.client("viewer").get(f"{BUDGETS}{budget.pk}/usage").json()
    assert body["spent"] == "0.750000" and body["remaining"] == "1.250000"
    assert body["percent_used"] == 37.5 and body["period"] == "monthly"
    assert [r["cost"] for r in body["by_day"]] == ["0.750000"]
    assert [(r["key"], r["cost"]) for r in body["by_workflow"]] == [(workflow.pk, "0.750000")]
    assert [(r["key"], r["calls"]) for r in body["by_agent"]] == [(agent.pk, 2)]
    assert [r["key"] for r in body["by_model"]] == ["simulated/sim-priced", "simulated/other"]


# --- evaluate ----------------------------------------------------------------------------------


def evaluate(cast, who="viewer", **body):
    return cast.client(who).post(
        f"{POLICIES}evaluate", {"project": str(cast.project.pk), **body}, format="json"
    )


def test_evaluate_a_model_call(cast):
    make_policy(cast.project, cast.owner, "allowed_models", {"models": ["openai/gpt-4o*"]})
    make_policy(cast.project, cast.owner, "max_tokens_per_call", {"max_tokens": 100}, name="cap")
    response = evaluate(
        cast, point="model_call", provider="openai", model="gpt-4o-mini", max_tokens=500
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["allowed"] is True and body["max_tokens"] == 100
    assert [d["outcome"] for d in body["decisions"]] == ["clamp"]
    denied = evaluate(cast, point="model_call", provider="anthropic", model="claude-x").json()
    assert denied["allowed"] is False and denied["decisions"][0]["outcome"] == "deny"
    assert not PolicyDecision.objects.exists()  # a dry run records nothing


def test_evaluate_text_and_tools(cast):
    make_policy(cast.project, cast.owner, "pii", {}, mode="audit", name="audit pii")
    make_policy(cast.project, cast.owner, "pii", {"detect": ["email"]}, priority=200)
    make_policy(cast.project, cast.owner, "tool_denylist", {"tools": ["shell"]})
    body = evaluate(cast, point="model_output", text="mail a@b.io").json()
    assert body["text"] == "mail [REDACTED_EMAIL]"
    assert [d["outcome"] for d in body["decisions"]] == ["audit_redact", "redact"]
    assert body["decisions"][0]["enforced"] is False
    body = evaluate(cast, point="tool_call", tool="shell", arguments={"to": "a@b.io"}).json()
    assert body["allowed"] is False and body["decisions"][0]["kind"] == "tool_denylist"
    body = evaluate(cast, point="tool_call", tool="mail", arguments={"to": "a@b.io"}).json()
    assert body["allowed"] is True and body["arguments"] == {"to": "[REDACTED_EMAIL]"}


def test_evaluate_run_start_with_a_budget(cast):
    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    budget = make_budget(cast.project, cast.owner, limit="1", name="Cap")
    budget_add(budget=budget, cost=Decimal("1"), at=timezone.now())
    body = evaluate(cast, point="run_start", workflow=workflow.pk).json()
    assert body["allowed"] is False
    assert body["decisions"][0]["budget"] == budget.pk and body["decisions"][0]["kind"] == "budget"


def test_evaluate_needs_membership(cast):
    response = evaluate(cast, who="outsider", point="prompt", text="x")
    assert response.status_code == 400 and "project" in response.json()["errors"]
    response = evaluate(cast, point="run_start", workflow=999999)
    assert response.status_code == 404


# --- audit -------------------------------------------------------------------------------------


def test_audit_log_is_for_admins(cast):
    make_policy(cast.project, cast.owner, "pii", {})
    url = f"/api/v1/projects/{cast.project.pk}/audit/"
    assert cast.client("developer").get(url).status_code == 403
    assert cast.client("outsider").get(url).status_code == 404
    body = cast.client("admin").get(url).json()
    actions = [e["action"] for e in body["results"]]
    assert actions[0] == "policy.create"
    assert body["results"][0]["actor_email"] == "owner@example.com"
    assert (
        cast.client("admin").get(url, {"action": "policy"}).json()["results"][0]["object_type"]
        == "policies.policy"
    )


def test_audit_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.admin)
    url = f"/api/v1/projects/{cast.project.pk}/audit/"
    make_policy(cast.project, cast.owner, "pii", {}, name="p0")
    # auth user, project, role, page of events (cursor pagination: no count)
    with django_assert_num_queries(4):
        assert client.get(url).status_code == 200
    for i in range(1, 10):
        make_policy(cast.project, cast.owner, "pii", {}, name=f"p{i}")
    with django_assert_num_queries(4):
        assert len(client.get(url).json()["results"]) >= 10
    assert AuditEvent.objects.filter(project=cast.project).count() >= 10


# --- user regexes run on RE2 -------------------------------------------------------------------
# `(a+)+$` backtracks exponentially in Python's `re`: 24 characters took seconds and each one
# more doubles it, so a 100k-character text would never finish. Finishing at all is the proof.
CATASTROPHIC = r"(a+)+$"
LONG_NO_MATCH = "a" * 100_000 + "!"


def test_a_catastrophic_pattern_evaluates_a_long_text(cast):
    make_policy(cast.project, cast.owner, "blocked_patterns", {"patterns": [CATASTROPHIC]})
    response = evaluate(cast, point="model_output", text=LONG_NO_MATCH)
    assert response.status_code == 200, response.json()
    assert response.json()["allowed"] is True
    denied = evaluate(cast, point="model_output", text="a" * 100_000).json()
    assert denied["allowed"] is False and denied["decisions"][0]["kind"] == "blocked_patterns"


@pytest.mark.parametrize(
    "pattern", [r"(a)\1", r"secret(?=key)", r"(?<!x)token", r"(?>atomic)", r"a++"]
)
def test_a_pattern_re2_cannot_run_is_a_400_naming_it(cast, pattern):
    rule = {"patterns": ["fine", pattern]}
    response = cast.client("admin").post(
        POLICIES, pii_body(cast, kind="blocked_patterns", rule=rule), format="json"
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert list(errors) == ["rule.patterns.1"], errors
    assert repr(pattern) in errors["rule.patterns.1"][0]
    assert not Policy.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_update_to_a_pattern_re2_cannot_run_is_a_400_and_changes_nothing(cast):
    policy = make_policy(cast.project, cast.owner, "blocked_patterns", {"patterns": ["ok"]})
    response = cast.client("admin").patch(
        f"{POLICIES}{policy.pk}/", {"rule": {"patterns": [r"(\w+)\s\1"]}}, format="json"
    )
    assert response.status_code == 400
    assert "rule.patterns.0" in response.json()["errors"]
    policy.refresh_from_db()
    assert policy.rule == {"patterns": ["ok"]}
