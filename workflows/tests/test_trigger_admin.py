"""The operator console for triggers: every page loads, forms run the services' checks, saves
and actions go through the services, and the PeriodicTask admin warns that edits there are
overwritten."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from django_celery_beat.models import PeriodicTask

from accounts.tests.factories import UserFactory
from runs.models import Run
from runs.triggers import schedules as schedule_firing
from sparkops.audit import AuditEvent
from workflows import event_triggers, schedules, webhooks
from workflows.models import EventTrigger, Schedule, ScheduleFire, WebhookTrigger
from workflows.tests.factories import WorkflowFactory
from workflows.tests.test_admin import form_data

pytestmark = pytest.mark.django_db

ADMIN = "/admin/workflows"


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def workflow(cast):
    return WorkflowFactory(project=cast.project, created_by=cast.owner)


@pytest.fixture
def schedule(cast, workflow):
    return schedules.schedule_create(
        actor=cast.owner, workflow=workflow, name="hourly", cron="0 * * * *", input={"name": "a"}
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_pages_load(cast, operator, workflow, schedule):
    schedule_firing.schedule_fire(schedule_id=schedule.pk, now=datetime(2025, 1, 1, 10, tzinfo=UTC))
    trigger, _, _ = webhooks.webhook_trigger_create(actor=cast.owner, workflow=workflow, name="h")
    event = event_triggers.event_trigger_create(
        actor=cast.owner, source_workflow=workflow, target_workflow=workflow, name="e"
    )
    fire = ScheduleFire.objects.get()
    pages = {
        "schedule": schedule.pk,
        "schedulefire": fire.pk,
        "webhooktrigger": trigger.pk,
        "eventtrigger": event.pk,
    }
    for model, pk in pages.items():
        assert operator.get(f"{ADMIN}/{model}/").status_code == 200, model
        assert operator.get(f"{ADMIN}/{model}/?q=a").status_code == 200, model
        assert operator.get(f"{ADMIN}/{model}/{pk}/change/").status_code == 200, model
    for model in ("schedule", "webhooktrigger", "eventtrigger"):
        assert operator.get(f"{ADMIN}/{model}/add/").status_code == 200, model
    for model in ("webhookreceipt", "eventtriggerfire"):
        assert operator.get(f"{ADMIN}/{model}/").status_code == 200, model
    page = operator.get(f"{ADMIN}/schedule/{schedule.pk}/change/").content.decode()
    assert "Next fire times" in page and "UTC" in page
    assert "PeriodicTask" in page  # the beat entry, linked


def test_schedule_add_goes_through_the_service_and_shows_errors(operator, workflow):
    page = operator.get(f"{ADMIN}/schedule/add/")
    data = form_data(
        page,
        workflow=workflow.pk,
        name="nightly",
        cron="0 2 * * *",
        timezone="Europe/Berlin",
        input='{"name": "Ada"}',
        overlap="skip",
    )
    invalid = operator.post(
        f"{ADMIN}/schedule/add/", {**data, "cron": "0 2 * *", "input": '{"name": 1}'}
    )
    assert invalid.status_code == 200
    errors = invalid.context["adminform"].form.errors
    assert "Expected 5 fields" in errors["cron"][0]
    assert errors["input"] == ["input.name: Must be of type string."]
    assert not Schedule.objects.exists()

    response = operator.post(f"{ADMIN}/schedule/add/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    schedule = Schedule.objects.get()
    assert schedule.project_id == workflow.project_id and schedule.periodic_task_id
    assert schedules.schedule_drift() == []

    page = operator.get(f"{ADMIN}/schedule/{schedule.pk}/change/")
    change = form_data(page, cron="*/5 * * * *")
    assert operator.post(f"{ADMIN}/schedule/{schedule.pk}/change/", change).status_code == 302
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).crontab.minute == "*/5"
    bad = operator.post(
        f"{ADMIN}/schedule/{schedule.pk}/change/", {**change, "timezone": "Nowhere"}
    )
    assert "Unknown time zone" in bad.context["adminform"].form.errors["timezone"][0]


def test_schedule_actions(operator, schedule):
    url = f"{ADMIN}/schedule/"
    ids = {"_selected_action": [schedule.pk]}
    operator.post(url, {"action": "disable_schedules", **ids})
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled is False
    schedule.refresh_from_db()
    assert schedule.paused_at is not None
    operator.post(url, {"action": "enable_schedules", **ids})
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled is True
    paused_resumed = AuditEvent.objects.filter(action__in=["schedule.pause", "schedule.resume"])
    assert [e.action for e in paused_resumed.order_by("created_at")] == [
        "schedule.pause",
        "schedule.resume",
    ]
    response = operator.post(url, {"action": "fire_now", **ids}, follow=True)
    run = Run.objects.get()
    assert run.trigger == "manual"
    assert any(str(run.pk) in m for m in messages_of(response))
    assert schedules.schedule_drift() == []


def test_periodic_task_admin_warns_that_edits_are_overwritten(operator, schedule):
    changelist = operator.get("/admin/django_celery_beat/periodictask/")
    assert any("overwritten by the next sync" in m for m in messages_of(changelist))
    page = operator.get(
        f"/admin/django_celery_beat/periodictask/{schedule.periodic_task_id}/change/"
    )
    assert page.status_code == 200
    assert any("overwritten by the next sync" in m for m in messages_of(page))


def test_webhook_trigger_add_shows_the_url_once_and_validates(cast, operator, workflow):
    page = operator.get(f"{ADMIN}/webhooktrigger/add/")
    data = form_data(page, workflow=workflow.pk, name="github", signature="github")
    invalid = operator.post(
        f"{ADMIN}/webhooktrigger/add/", {**data, "input_mapping": '{"a": "{{ secrets.x }}"}'}
    )
    assert "Unknown name(s) secrets" in invalid.context["adminform"].form.errors["input_mapping"][0]
    response = operator.post(f"{ADMIN}/webhooktrigger/add/", data, follow=True)
    trigger = WebhookTrigger.objects.get()
    shown = messages_of(response)
    assert any("/api/v1/hooks/whk_" in m for m in shown)
    assert any("Signature secret (shown once" in m for m in shown)
    assert trigger.secret_encrypted

    response = operator.post(
        f"{ADMIN}/webhooktrigger/",
        {"action": "rotate_tokens", "_selected_action": [trigger.pk]},
        follow=True,
    )
    old_hash = trigger.token_hash
    trigger.refresh_from_db()
    assert trigger.token_hash != old_hash
    assert any("New URL of github" in m for m in messages_of(response))


def test_event_trigger_add_validates(cast, operator, workflow):
    page = operator.get(f"{ADMIN}/eventtrigger/add/")
    data = form_data(
        page,
        source_workflow=workflow.pk,
        target_workflow=workflow.pk,
        name="again",
        statuses='["succeeded"]',
    )
    invalid = operator.post(f"{ADMIN}/eventtrigger/add/", {**data, "statuses": '["done"]'})
    assert "statuses" in invalid.context["adminform"].form.errors
    foreign = WorkflowFactory(project=cast.other_project, created_by=cast.outsider)
    crossing = operator.post(f"{ADMIN}/eventtrigger/add/", {**data, "target_workflow": foreign.pk})
    assert crossing.context["adminform"].form.errors["target_workflow"] == [
        "Must be in the project of the source workflow."
    ]
    assert operator.post(f"{ADMIN}/eventtrigger/add/", data).status_code == 302
    trigger = EventTrigger.objects.get()
    assert trigger.project_id == workflow.project_id and trigger.statuses == ["succeeded"]


def test_bulk_delete_of_triggers_goes_through_the_services(cast, operator, workflow, schedule):
    """The changelist's "delete selected" deletes each trigger through its service, so each
    delete is audited as a single one is."""
    hook, _, _ = webhooks.webhook_trigger_create(actor=cast.owner, workflow=workflow, name="h")
    event = event_triggers.event_trigger_create(
        actor=cast.owner, source_workflow=workflow, target_workflow=workflow, name="e"
    )
    for kind, obj in [("schedule", schedule), ("webhooktrigger", hook), ("eventtrigger", event)]:
        response = operator.post(
            f"{ADMIN}/{kind}/",
            {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"},
        )
        assert response.status_code == 302, kind
    assert not Schedule.objects.exists()
    assert not WebhookTrigger.objects.exists()
    assert not EventTrigger.objects.exists()
    deletes = AuditEvent.objects.filter(action__endswith=".delete")
    assert sorted(deletes.values_list("action", flat=True)) == [
        "event_trigger.delete",
        "schedule.delete",
        "webhook_trigger.delete",
    ]
