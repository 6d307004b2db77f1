"""Policies evaluated before a run starts (max concurrent runs, allowed hours), through the
API: an enforced denial is a 409 naming the policy (the refused start's decision is still
recorded); audit mode lets the run start and links the decision to it as a run event."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from policies.models import PolicyDecision
from policies.tests.factories import make_policy
from runs.models import Run, RunEvent
from runs.tests.conftest import sends_lost
from runs.tests.factories import make_workflow, transform

pytestmark = pytest.mark.django_db


def start(cast, workflow):
    return cast.client("developer").post(
        f"/api/v1/workflows/{workflow.pk}/run", {"input": {}}, format="json"
    )


@pytest.fixture
def workflow(cast):
    return make_workflow(cast.project, cast.owner, [transform("a", 1)])


def test_max_concurrent_runs_refuses_with_409_naming_the_policy(cast, workflow):
    policy = make_policy(
        cast.project, cast.owner, "max_concurrent_runs", {"max_runs": 1}, name="One at a time"
    )
    with sends_lost():  # the first run stays pending: it is active
        assert start(cast, workflow).status_code == 201
    response = start(cast, workflow)
    assert response.status_code == 409
    body = response.json()
    assert body["type"] == "policy_denied"
    assert "policy 'One at a time'" in body["detail"]
    assert "1 active run(s); at most 1" in body["detail"]
    assert body["policy"] == {
        "id": policy.pk,
        "name": "One at a time",
        "kind": "max_concurrent_runs",
    }
    assert Run.objects.count() == 1
    (decision,) = PolicyDecision.objects.all()
    assert (decision.point, decision.outcome, decision.run_id, decision.workflow_id) == (
        "run_start",
        "deny",
        None,
        workflow.pk,
    )
    # A finished run no longer counts.
    Run.objects.update(status="succeeded")
    with sends_lost():
        assert start(cast, workflow).status_code == 201


def test_max_concurrent_runs_in_audit_mode_records_on_the_new_run(cast, workflow):
    policy = make_policy(
        cast.project, cast.owner, "max_concurrent_runs", {"max_runs": 1}, mode="audit"
    )
    with sends_lost():
        first = start(cast, workflow)
        second = start(cast, workflow)
    assert (first.status_code, second.status_code) == (201, 201)
    run = Run.objects.get(pk=second.json()["id"])
    (decision,) = PolicyDecision.objects.all()
    assert (decision.policy_id, decision.outcome, decision.run_id) == (
        policy.pk,
        "audit_deny",
        run.pk,
    )
    event = RunEvent.objects.get(run=run, type="policy.decision")
    assert event.payload["outcome"] == "audit_deny" and event.payload["point"] == "run_start"
    assert not RunEvent.objects.filter(run_id=first.json()["id"], type="policy.decision").exists()


def closed_now() -> dict:
    """A daily window that does not contain the current time (UTC)."""
    hour = (timezone.now() + timedelta(hours=2)).hour
    return {"timezone": "UTC", "windows": [{"start": f"{hour:02d}:00", "end": f"{hour:02d}:30"}]}


def test_allowed_hours_refuses_outside_the_windows(cast, workflow):
    make_policy(cast.project, cast.owner, "allowed_hours", closed_now(), name="Office hours")
    response = start(cast, workflow)
    assert response.status_code == 409
    assert "policy 'Office hours'" in response.json()["detail"]
    assert "runs may start only daily" in response.json()["detail"]
    assert PolicyDecision.objects.get().outcome == "deny"


def test_allowed_hours_lets_runs_start_inside_a_window(cast, workflow):
    now = timezone.now()
    window = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=1)).strftime("%H:%M"),  # may run past midnight
    }
    make_policy(cast.project, cast.owner, "allowed_hours", {"timezone": "UTC", "windows": [window]})
    with sends_lost():
        assert start(cast, workflow).status_code == 201
    assert not PolicyDecision.objects.exists()


def test_allowed_hours_in_audit_mode(cast, workflow):
    make_policy(cast.project, cast.owner, "allowed_hours", closed_now(), mode="audit")
    with sends_lost():
        assert start(cast, workflow).status_code == 201
    assert PolicyDecision.objects.get().outcome == "audit_deny"


def test_another_projects_policy_does_not_apply(cast, workflow):
    make_policy(cast.other_project, cast.outsider, "allowed_hours", closed_now())
    with sends_lost():
        assert start(cast, workflow).status_code == 201


def test_the_planner_hook_for_tool_approvals(cast):
    """`policy_hooks.tool_needs_approval`, ready for the planner: an enforced policy pauses the
    tool node (recorded on the run); audit mode or another tool does not."""
    from runs.services import policy_hooks
    from runs.tests.factories import finished_run

    run = finished_run(cast, status="running")
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["send-*"]})
    make_policy(
        cast.project,
        cast.owner,
        "tool_requires_approval",
        {"tools": ["*"]},
        mode="audit",
        name="all",
    )
    reason = policy_hooks.tool_needs_approval(run=run, node_id="a", tool_name="send-mail")
    assert "Tool 'send-mail' needs an approval" in reason
    assert policy_hooks.tool_needs_approval(run=run, node_id="a", tool_name="calc") is None
    (decision,) = PolicyDecision.objects.filter(run=run)
    assert (decision.outcome, decision.node_id, decision.point) == (
        "require_approval",
        "a",
        "tool_call",
    )
    assert RunEvent.objects.get(run=run, type="policy.decision").payload["outcome"] == (
        "require_approval"
    )
