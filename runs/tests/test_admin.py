"""The operator console for runs: lists, a run's page with its steps and events, the actions
(cancel, retry, approve) going through the engine's services, and staff scoping."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.tests.factories import UserFactory
from projects.models import Role
from projects.tests.factories import MembershipFactory
from runs import services
from runs.models import IdempotencyKey, Run, RunEvent, RunStep
from runs.tests.conftest import drive
from runs.tests.factories import make_workflow, transform

pytestmark = pytest.mark.django_db

RUNS = "/admin/runs/run/"
STEPS = "/admin/runs/runstep/"


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory.create(is_staff=True, is_superuser=True))
    return client


def change(base: str, obj: Any) -> str:
    return f"{base}{obj.pk}/change/"


def start(cast, nodes, name="wf", **kwargs):
    workflow = make_workflow(cast.project, cast.owner, nodes, name=name)
    return services.run_create(workflow=workflow, input={"k": "v"}, actor=cast.owner, **kwargs)


def waiting_run(cast, name="reviewed"):
    run = drive(
        start(
            cast,
            [
                transform("draft", "text"),
                {"id": "review", "type": "approval", "depends_on": ["draft"]},
                transform("publish", "done", "review"),
            ],
            name=name,
        )
    )
    assert run.status == "waiting_approval"
    return run


def test_changelist_lists_runs(cast, operator):
    run = drive(start(cast, [transform("alpha", 1)]))
    response = operator.get(RUNS)
    assert response.status_code == 200
    page = response.content.decode()
    assert str(run.pk)[:8] in page
    assert "succeeded" in page
    for query in ("?status__exact=succeeded", "?trigger__exact=api", f"?q={run.pk}"):
        response = operator.get(RUNS + query)
        assert response.status_code == 200
        assert str(run.pk)[:8] in response.content.decode()
    assert str(run.pk)[:8] not in operator.get(RUNS + "?status__exact=failed").content.decode()


def test_run_page_shows_steps_and_events(cast, operator):
    run = drive(
        start(
            cast, [transform("first_node", "{{ input.k }}"), transform("second", 2, "first_node")]
        )
    )
    response = operator.get(change(RUNS, run))
    assert response.status_code == 200
    page = response.content.decode()
    assert "first_node" in page and "second" in page  # the steps inline
    assert "run.status" in page and "step.status" in page  # the events inline
    assert page.count("step.status") >= RunEvent.objects.filter(run=run, type="step.status").count()


def test_run_page_is_read_only(cast, operator):
    run = drive(start(cast, [transform("a", 1)]))
    response = operator.post(change(RUNS, run), {"status": "failed", "input": '{"x": 1}'})
    assert response.status_code in (200, 302, 403)
    run.refresh_from_db()
    assert (run.status, run.input) == ("succeeded", {"k": "v"})


def test_records_cannot_be_added_by_hand(operator):
    for model in ("run", "runstep", "runevent", "idempotencykey"):
        assert operator.get(f"/admin/runs/{model}/add/").status_code == 403


def test_other_lists_and_pages_load(cast, operator):
    run = drive(start(cast, [transform("a", 1)]))
    services.run_create_idempotent(
        key="k1",
        body={"x": 1},
        actor=cast.owner,
        workflow=run.workflow,
        render=lambda r: {"id": str(r.pk)},
        input={},
    )
    step = RunStep.objects.get(run=run)
    event = RunEvent.objects.filter(run=run).first()
    key = IdempotencyKey.objects.get()
    for base, obj in (
        (STEPS, step),
        ("/admin/runs/runevent/", event),
        ("/admin/runs/idempotencykey/", key),
    ):
        assert operator.get(base).status_code == 200, base
        assert operator.get(change(base, obj)).status_code == 200, base


def test_cancel_action(cast, operator):
    run = waiting_run(cast)
    done = drive(start(cast, [transform("a", 1)], name="done"))
    response = operator.post(
        RUNS, {"action": "cancel_runs", "_selected_action": [run.pk, done.pk]}, follow=True
    )
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert set(run.steps.values_list("status", flat=True)) == {"succeeded", "cancelled"}
    messages = [str(m) for m in response.context["messages"]]
    assert any("Cancelled: 1" in m for m in messages), messages
    assert any("already finished" in m for m in messages), messages  # reported per row


def test_retry_actions(cast, operator):
    failed = drive(start(cast, [transform("a", 1), transform("b", "{{ input.missing.x }}", "a")]))
    assert failed.status == "failed"
    response = operator.post(RUNS, {"action": "retry_runs", "_selected_action": [failed.pk]})
    assert response.status_code == 302
    plain = Run.objects.get(parent_run=failed, reuse_succeeded=False)
    assert plain.trigger == "retry"
    response = operator.post(
        RUNS, {"action": "retry_from_failure", "_selected_action": [failed.pk]}
    )
    assert response.status_code == 302
    resumed = Run.objects.get(parent_run=failed, reuse_succeeded=True)
    assert resumed.steps.get(node_id="a").reused_from == failed.steps.get(node_id="a")
    # an active run cannot be retried: nothing is created
    response = operator.post(
        RUNS, {"action": "retry_runs", "_selected_action": [plain.pk]}, follow=True
    )
    assert not Run.objects.filter(parent_run=plain).exists()
    assert any("finished run" in str(m) for m in response.context["messages"])


def test_step_approve_action(cast, operator):
    run = waiting_run(cast)
    step = run.steps.get(node_id="review")
    data = {"action": "approve", "_selected_action": [step.pk]}
    # first the intermediate page (comment), then the decision
    confirm = operator.post(STEPS, data)
    assert confirm.status_code == 200
    assert "review" in confirm.content.decode()
    step.refresh_from_db()
    assert step.status == "waiting_approval"
    response = operator.post(STEPS, {**data, "confirm": "yes", "comment": "looks right"})
    assert response.status_code == 302
    step.refresh_from_db()
    assert step.status == "succeeded"
    assert step.decision_comment == "looks right"
    assert step.decided_by is not None
    assert Run.objects.get(pk=run.pk).status == "running"


def test_staff_member_sees_only_their_projects_runs(cast):
    mine = drive(start(cast, [transform("a", 1)]))
    theirs_wf = make_workflow(cast.other_project, cast.outsider, [transform("a", 1)], name="x")
    theirs = services.run_create(workflow=theirs_wf, input={}, actor=cast.outsider)
    staff = UserFactory(is_staff=True)
    MembershipFactory(project=cast.project, user=staff, role=Role.VIEWER)
    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="runs", codename__in=["view_run", "view_runstep"]
        )
    )
    client = Client()
    client.force_login(staff)
    listed = client.get(RUNS).context["cl"].result_list
    assert [run.pk for run in listed] == [mine.pk]
    assert client.get(change(RUNS, mine)).status_code == 200
    assert client.get(change(RUNS, theirs)).status_code == 302  # "doesn't exist", to the index
    steps = client.get(STEPS).context["cl"].result_list
    assert {step.run_id for step in steps} == {mine.pk}
