"""The operator console for governance: every page loads; policies and budgets are saved
through the services (same validation as the API, errors on the form); decisions, spend,
usage and the audit log are read-only."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.tests.factories import UserFactory
from policies.budgets import budget_add
from policies.models import Budget, BudgetSpend, Policy, PolicyDecision, UsageRecord
from policies.tests.factories import make_budget, make_policy
from sparkops.audit import AuditEvent
from workflows.tests.factories import make_workflow, transform

pytestmark = pytest.mark.django_db

ADMIN = "/admin/policies"


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory.create(is_staff=True, is_superuser=True))
    return client


def management(page: str) -> dict[str, str]:
    fields = {}
    for tag in re.findall(r"<input[^>]+>", page):
        name = re.search(r'name="([^"]+-(?:TOTAL|INITIAL|MIN_NUM|MAX_NUM)_FORMS)"', tag)
        if name:
            value = re.search(r'value="([^"]*)"', tag)
            fields[name.group(1)] = value.group(1) if value else ""
    return fields


@pytest.fixture
def rows(cast):
    policy = make_policy(cast.project, cast.owner, "pii", {"action": "redact"})
    budget = make_budget(cast.project, cast.owner)
    budget_add(budget=budget, cost=Decimal("0.5"), at=timezone.now())
    decision = PolicyDecision.objects.create(
        project=cast.project,
        policy=policy,
        source_name=policy.name,
        kind="pii",
        mode="enforce",
        point="model_output",
        outcome="redact",
        reason="Personal data redacted.",
        details={"found": {"email": 1}},
    )
    usage = UsageRecord.objects.create(
        project=cast.project, provider="simulated", model="sim-priced", cost=Decimal("0.1")
    )
    return {
        "policy": policy,
        "budget": budget,
        "policydecision": decision,
        "budgetspend": BudgetSpend.objects.get(budget=budget),
        "usagerecord": usage,
        "auditevent": AuditEvent.objects.filter(action="policy.create").get(),
    }


WRITABLE = {"policy", "budget"}


@pytest.mark.parametrize(
    "model", ["policy", "budget", "policydecision", "budgetspend", "usagerecord", "auditevent"]
)
def test_pages_load(operator, rows, model):
    obj = rows[model]
    changelist = operator.get(f"{ADMIN}/{model}/")
    assert changelist.status_code == 200
    assert operator.get(f"{ADMIN}/{model}/?q=a").status_code == 200
    add = operator.get(f"{ADMIN}/{model}/add/")
    assert add.status_code == (200 if model in WRITABLE else 403)
    change = operator.get(f"{ADMIN}/{model}/{obj.pk}/change/")
    assert change.status_code == 200
    if model not in WRITABLE:
        assert b'name="_save"' not in change.content
        assert operator.post(f"{ADMIN}/{model}/{obj.pk}/change/", {}).status_code == 403
        assert (
            operator.post(f"{ADMIN}/{model}/{obj.pk}/delete/", {"post": "yes"}).status_code == 403
        )


def policy_form(cast, **fields):
    data = {
        "project": str(cast.project.pk),
        "name": "Admin PII",
        "description": "",
        "kind": "pii",
        "mode": "enforce",
        "enabled": "on",
        "priority": "50",
        "rule": json.dumps({"action": "deny"}),
    }
    data.update(fields)
    return data


def test_add_a_policy_through_the_services(operator, cast):
    response = operator.post(f"{ADMIN}/policy/add/", policy_form(cast))
    assert response.status_code == 302, response.content.decode()[:3000]
    policy = Policy.objects.get(name="Admin PII")
    assert policy.rule == {"action": "deny"} and policy.priority == 50
    assert AuditEvent.objects.filter(action="policy.create", object_id=str(policy.pk)).exists()


def test_an_invalid_policy_shows_the_errors_on_the_form(operator, cast):
    response = operator.post(
        f"{ADMIN}/policy/add/",
        policy_form(cast, kind="blocked_patterns", rule=json.dumps({"patterns": ["(x"]})),
    )
    assert response.status_code == 200
    assert "rule.patterns.0: Not a valid regular expression" in response.content.decode()
    assert not Policy.objects.exists()


def test_a_global_policy_from_the_console(operator, cast):
    response = operator.post(f"{ADMIN}/policy/add/", policy_form(cast, project=""))
    assert response.status_code == 302
    assert Policy.objects.get().project is None


def test_change_a_policy(operator, cast):
    policy = make_policy(cast.project, cast.owner, "pii", {})
    url = f"{ADMIN}/policy/{policy.pk}/change/"
    response = operator.post(url, policy_form(cast, mode="audit", name=policy.name))
    assert response.status_code == 302, response.content.decode()[:3000]
    policy.refresh_from_db()
    assert policy.mode == "audit" and policy.rule == {"action": "deny"}
    assert AuditEvent.objects.filter(action="policy.update").exists()


def budget_form(page, cast, **fields):
    data = {
        "project": str(cast.project.pk),
        "name": "Console budget",
        "workflow": "",
        "agent": "",
        "period": "daily",
        "limit_usd": "2.5",
        "soft_threshold": "75",
        "action": "block",
        "enabled": "on",
        **management(page),
    }
    data.update(fields)
    return data


def test_add_a_budget_through_the_services(operator, cast):
    page = operator.get(f"{ADMIN}/budget/add/").content.decode()
    response = operator.post(f"{ADMIN}/budget/add/", budget_form(page, cast))
    assert response.status_code == 302, response.content.decode()[:3000]
    budget = Budget.objects.get()
    assert (budget.period, budget.limit_usd, budget.soft_threshold) == ("daily", Decimal("2.5"), 75)
    assert AuditEvent.objects.filter(action="budget.create").exists()


def test_an_invalid_budget_shows_the_errors_on_the_form(operator, cast):
    other = make_workflow(cast.other_project, cast.outsider, [transform("a", 1)])
    page = operator.get(f"{ADMIN}/budget/add/").content.decode()
    response = operator.post(
        f"{ADMIN}/budget/add/",
        budget_form(page, cast, workflow=str(other.pk), limit_usd="0", soft_threshold="120"),
    )
    assert response.status_code == 200
    content = response.content.decode()
    assert "No workflow" in content and "positive amount" in content
    assert not Budget.objects.exists()


def test_change_a_budget(operator, cast):
    budget = make_budget(cast.project, cast.owner)
    url = f"{ADMIN}/budget/{budget.pk}/change/"
    page = operator.get(url).content.decode()
    response = operator.post(url, budget_form(page, cast, name=budget.name, limit_usd="9"))
    assert response.status_code == 302, response.content.decode()[:3000]
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal("9")
