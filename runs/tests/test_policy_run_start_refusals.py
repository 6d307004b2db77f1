"""A refused run start keeps its decision on record whatever started it (the API, with or
without an Idempotency-Key, an inbound hook, a schedule), with transactions real: `run_create`
raises the refusal past the transaction that wrote the decision, never through it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from policies.models import PolicyDecision
from policies.tests.factories import make_policy
from runs.models import IdempotencyKey, Run
from runs.tests.factories import make_workflow, transform
from runs.tests.test_policy_run_start import closed_now
from runs.triggers import schedules as schedule_firing
from workflows import schedules, webhooks
from workflows.models import ScheduleFire, WebhookReceipt

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def workflow(cast):
    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    make_policy(cast.project, cast.owner, "allowed_hours", closed_now(), name="Office hours")
    return workflow


def refusals(workflow):
    return list(PolicyDecision.objects.filter(workflow=workflow, point="run_start", outcome="deny"))


def test_an_api_refusal_is_on_record(cast, workflow):
    response = cast.client("developer").post(
        f"/api/v1/workflows/{workflow.pk}/run", {"input": {}}, format="json"
    )
    assert response.status_code == 409, response.json()
    assert response.json()["type"] == "policy_denied"
    (decision,) = refusals(workflow)
    assert decision.run_id is None and decision.source_name == "Office hours"
    assert not Run.objects.exists()


def test_a_refusal_under_an_idempotency_key_is_on_record_and_keeps_no_key(cast, workflow):
    client = cast.client("developer")
    for attempt in (1, 2):
        response = client.post(
            f"/api/v1/workflows/{workflow.pk}/run",
            {"input": {}},
            format="json",
            HTTP_IDEMPOTENCY_KEY="start-1",
        )
        assert response.status_code == 409, response.json()
        assert len(refusals(workflow)) == attempt  # each refusal is decided (and kept) anew
    assert not IdempotencyKey.objects.exists()
    assert not Run.objects.exists()


def test_a_webhook_refusal_is_on_record_and_keeps_no_receipt(cast, workflow, api):
    _, token, _ = webhooks.webhook_trigger_create(actor=cast.owner, workflow=workflow, name="h")
    response = api.post(
        f"/api/v1/hooks/{token}", {}, format="json", HTTP_IDEMPOTENCY_KEY="delivery-1"
    )
    assert response.status_code == 409, response.json()
    assert len(refusals(workflow)) == 1
    assert not WebhookReceipt.objects.exists()
    assert not Run.objects.exists()


def test_a_schedule_refusal_is_on_record_beside_its_fire(cast, workflow):
    schedule = schedules.schedule_create(
        actor=cast.owner, workflow=workflow, name="hourly", cron="0 * * * *", input={}
    )
    slot = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    schedule_firing.schedule_fire(schedule_id=schedule.pk, now=slot)
    fire = ScheduleFire.objects.get(schedule=schedule)
    assert fire.status == ScheduleFire.Status.FAILED
    assert "Office hours" in fire.reason
    assert len(refusals(workflow)) == 1
    assert not Run.objects.exists()
