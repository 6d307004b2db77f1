"""An archived project is read-only: every write route into it (the table of
tests/test_write_routes.py, walked whole) answers 409 naming the state, except the few that stop
work or act on the project row itself; schedules, inbound hooks and event triggers stop; restore
brings everything back."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from conftest import Cast, client_for
from projects import services as project_services
from tests.test_write_routes import WRITES

pytestmark = pytest.mark.django_db

# Still allowed while the project is archived, with their usual status: the caller's own
# account, the project row itself (archive, restore, rename, transfer, delete, copy),
# answering an invitation, reads that happen to be POSTs, MCP, and stopping work.
ALLOWED = {
    ("project-list", "post"),
    ("project-detail", "put"),
    ("project-detail", "patch"),
    ("project-detail", "delete"),
    ("project-archive", "post"),
    ("project-restore", "post"),
    ("project-clone", "post"),
    ("project-transfer", "post"),
    ("invitation-accept", "post"),
    ("invitation-decline", "post"),
    ("workflow-validate", "post"),
    ("schedule-preview-cron", "post"),
    ("policy-evaluate", "post"),
    # MCP answers in JSON-RPC: its tool call into an archived project is a tool error (200)
    # naming the state (runs/tests/test_mcp.py).
    ("project-mcp", "post"),
    ("run-cancel", "post"),
    ("run-cancel", "patch"),
    ("run-reject", "post"),
}


def _set_status(cast: Cast, status: str) -> None:
    cast.project.refresh_from_db()
    project_services.project_set_status(project=cast.project, actor=cast.owner, status=status)


def _call(
    cast: Cast,
    name: str,
    method: str,
    kwargs: dict[str, Any],
    body: Any,
    who: str,
    format: str = "json",
) -> Any:
    client = client_for() if who == "anonymous" else cast.client(who)
    return getattr(client, method)(reverse(name, kwargs=kwargs), body, format=format)


def test_every_write_into_an_archived_project_is_a_409_naming_the_state(cast, settings):
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    wrong = []
    for (name, method), call in WRITES.items():
        if call.app == "accounts":
            continue
        kwargs, body = call.build(cast)
        _set_status(cast, "archived")
        response = _call(cast, name, method, kwargs, body, call.who, call.format)
        _set_status(cast, "active")
        if (name, method) in ALLOWED:
            if response.status_code != call.status:
                wrong.append((name, method, response.status_code, response.content[:200]))
            continue
        payload = response.json() if response.content else {}
        if (
            response.status_code != 409
            or payload.get("type") != "conflict"
            or f"Project '{cast.project.name}' is archived" not in payload.get("detail", "")
        ):
            wrong.append((name, method, response.status_code, response.content[:200]))
    assert not wrong, wrong


def test_reads_still_work_and_restore_lifts_the_lock(cast):
    from workflows.tests.factories import WorkflowFactory

    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    client = cast.client("developer")
    _set_status(cast, "archived")
    assert client.get(f"/api/v1/workflows/{workflow.pk}/").status_code == 200
    assert client.get("/api/v1/agents/").status_code == 200
    refused = client.post(f"/api/v1/workflows/{workflow.pk}/run", {"input": {}}, format="json")
    assert refused.status_code == 409
    assert refused.json()["project_status"] == "archived"
    assert cast.client("owner").post(f"/api/v1/projects/{cast.project.pk}/restore").json()[
        "status"
    ] == ("active")
    started = client.post(
        f"/api/v1/workflows/{workflow.pk}/run", {"input": {"name": "Ada"}}, format="json"
    )
    assert started.status_code == 201, started.content


def test_a_viewer_still_gets_403_not_409(cast):
    _set_status(cast, "archived")
    body = {"project": str(cast.project.pk), "name": "a", "provider": "simulated", "model": "m"}
    assert cast.client("viewer").post("/api/v1/agents/", body, format="json").status_code == 403


def test_schedules_stop_firing_while_archived_and_resume_on_restore(cast):
    from runs.triggers import schedules as firing
    from workflows import schedules
    from workflows.models import ScheduleFire
    from workflows.tests.factories import WorkflowFactory

    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    schedule = schedules.schedule_create(
        actor=cast.owner, workflow=workflow, name="s", cron="* * * * *", input={"name": "x"}
    )
    task = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert task.enabled
    _set_status(cast, "archived")
    task.refresh_from_db()
    assert not task.enabled
    # A fire beat had already sent is recorded as skipped; no run starts.
    fire = firing.schedule_fire(schedule_id=schedule.pk)
    assert (fire.status, fire.reason, fire.run) == (
        ScheduleFire.Status.SKIPPED,
        "The project is archived.",
        None,
    )
    _set_status(cast, "active")
    task.refresh_from_db()
    assert task.enabled


def test_inbound_hooks_answer_409_while_archived(cast):
    from workflows import webhooks
    from workflows.tests.factories import WorkflowFactory

    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    token = webhooks.webhook_trigger_create(actor=cast.owner, workflow=workflow, name="h")[1]
    url = reverse("hook", kwargs={"token": token})
    _set_status(cast, "archived")
    response = client_for().post(url, {"name": "Ada"}, format="json")
    assert response.status_code == 409 and "archived" in response.json()["detail"]
    _set_status(cast, "active")
    assert client_for().post(url, {"name": "Ada"}, format="json").status_code == 202


def test_event_triggers_start_nothing_while_archived(cast):
    from runs.models import Run
    from runs.tests.factories import finished_run
    from runs.triggers import events
    from workflows import event_triggers
    from workflows.models import EventTriggerFire
    from workflows.tests.factories import WorkflowFactory

    source = finished_run(cast)
    target = WorkflowFactory(project=cast.project, created_by=cast.owner)
    event_triggers.event_trigger_create(
        actor=cast.owner,
        source_workflow=source.workflow,
        target_workflow=target,
        name="chain",
        input_mapping={"name": "Ada"},
    )
    _set_status(cast, "archived")
    (fire,) = events.event_triggers_fire(run=source)
    assert fire.status == EventTriggerFire.Status.FAILED
    assert "archived" in fire.reason
    assert not Run.objects.filter(workflow=target).exists()
