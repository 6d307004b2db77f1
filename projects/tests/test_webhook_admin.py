"""The operator console for outbound webhooks: pages load, the endpoint form runs the API's
checks (refused URLs, event types), the secret is shown once, actions go through services."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from projects import webhooks
from projects.models import WebhookDelivery, WebhookEndpoint
from workflows.tests.test_admin import form_data

pytestmark = pytest.mark.django_db

ADMIN = "/admin/projects"


@pytest.fixture
def operator(db: Any, settings: Any) -> Client:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_pages_load(cast, operator):
    endpoint, _ = webhooks.endpoint_create(
        actor=cast.owner, project=cast.project, url="http://127.0.0.1:9/hook"
    )
    delivery = webhooks.endpoint_ping(endpoint=endpoint, actor=cast.owner)
    assert operator.get(f"{ADMIN}/webhookendpoint/").status_code == 200
    assert operator.get(f"{ADMIN}/webhookendpoint/?q=127").status_code == 200
    assert operator.get(f"{ADMIN}/webhookendpoint/add/").status_code == 200
    assert operator.get(f"{ADMIN}/webhookendpoint/{endpoint.pk}/change/").status_code == 200
    assert operator.get(f"{ADMIN}/webhookdelivery/").status_code == 200
    page = operator.get(f"{ADMIN}/webhookdelivery/{delivery.pk}/change/")
    assert page.status_code == 200
    assert "Ping from Spark-Ops." in page.content.decode()


def test_add_refuses_internal_urls_and_shows_the_secret_once(cast, operator):
    page = operator.get(f"{ADMIN}/webhookendpoint/add/")
    data = form_data(page, project=cast.project.pk, url="http://127.0.0.1:9/hook")
    data["events"] = '["run.failed"]'
    refused = operator.post(f"{ADMIN}/webhookendpoint/add/", {**data, "url": "http://10.0.0.1/x"})
    assert refused.context["adminform"].form.errors["url"][0].startswith("Not allowed:")
    unknown = operator.post(f"{ADMIN}/webhookendpoint/add/", {**data, "events": '["nope"]'})
    assert "events" in unknown.context["adminform"].form.errors
    assert not WebhookEndpoint.objects.exists()

    response = operator.post(f"{ADMIN}/webhookendpoint/add/", data, follow=True)
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.events == ["run.failed"]
    secret = webhooks.endpoint_secret(endpoint)
    assert any(secret in m for m in messages_of(response))

    page = operator.get(f"{ADMIN}/webhookendpoint/{endpoint.pk}/change/")
    assert secret not in page.content.decode()
    change = form_data(page, description="ops pager")
    change["events"] = '["*"]'
    assert (
        operator.post(f"{ADMIN}/webhookendpoint/{endpoint.pk}/change/", change).status_code == 302
    )
    endpoint.refresh_from_db()
    assert (endpoint.description, endpoint.events) == ("ops pager", ["*"])


def test_actions(cast, operator):
    endpoint, _ = webhooks.endpoint_create(
        actor=cast.owner, project=cast.project, url="http://127.0.0.1:9/hook"
    )
    ids = {"_selected_action": [endpoint.pk]}
    operator.post(f"{ADMIN}/webhookendpoint/", {"action": "ping_endpoints", **ids})
    delivery = WebhookDelivery.objects.get(event_type="ping")
    response = operator.post(
        f"{ADMIN}/webhookendpoint/", {"action": "rotate_secrets", **ids}, follow=True
    )
    endpoint.refresh_from_db()
    assert endpoint.previous_secret_encrypted
    assert any(webhooks.endpoint_secret(endpoint) in m for m in messages_of(response))

    pending = operator.post(
        f"{ADMIN}/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [delivery.pk]},
        follow=True,
    )
    assert any("still being attempted" in m for m in messages_of(pending))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed")
    operator.post(
        f"{ADMIN}/webhookdelivery/", {"action": "redeliver", "_selected_action": [delivery.pk]}
    )
    delivery.refresh_from_db()
    assert delivery.status == "pending"
