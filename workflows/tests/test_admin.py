from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from workflows.models import Workflow, WorkflowVersion
from workflows.tests.factories import WorkflowFactory, transform_definition
from workflows.tests.test_services import agent_then_tool, make_agent, make_tool

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/workflows/workflow/"
ADD = f"{CHANGELIST}add/"


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def change_url(workflow: Workflow) -> str:
    return f"{CHANGELIST}{workflow.pk}/change/"


def form_data(response: Any, **overrides: Any) -> dict[str, Any]:
    """What the browser would post back: the main form's and inlines' current values."""
    data: dict[str, Any] = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        for name in management.fields:
            data[management.add_prefix(name)] = management[name].value()
        forms.extend(formset.forms)
    for form in forms:
        for name in form.fields:
            value = form[name].value()  # already rendered as the widget shows it
            if value is not None:
                data[form.add_prefix(name)] = value
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def test_pages_load(cast, operator):
    workflow = WorkflowFactory(project=cast.project)
    assert operator.get(CHANGELIST).status_code == 200
    assert operator.get(CHANGELIST, {"q": "acme", "status__exact": "active"}).status_code == 200
    assert operator.get(ADD).status_code == 200
    page = operator.get(change_url(workflow))
    assert page.status_code == 200
    content = page.content.decode()
    assert "&quot;type&quot;: &quot;transform&quot;" in content  # pretty JSON (indented)
    assert "1. greet" in content  # layers
    version = workflow.versions.get()
    assert operator.get("/admin/workflows/workflowversion/").status_code == 200
    assert operator.get(f"/admin/workflows/workflowversion/{version.pk}/change/").status_code == 200
    assert operator.get("/admin/workflows/workflowversion/add/").status_code == 403


def test_add_goes_through_the_service(cast, operator):
    data = form_data(
        operator.get(ADD),
        project=str(cast.project.pk),
        name="From the console",
        slug="",
        definition=json.dumps(transform_definition()),
        retry_policy='{"max_attempts": 3}',
        triggers="{}",
        status="draft",
        timeout_seconds="120",
    )
    response = operator.post(ADD, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    workflow = Workflow.objects.get(name="From the console")
    assert workflow.slug == "from-the-console"
    assert workflow.created_by.is_superuser
    assert workflow.retry_policy["max_attempts"] == 3
    assert workflow.retry_policy["backoff_seconds"] == 2
    assert workflow.versions.get().snapshot["timeout_seconds"] == 120


def test_add_shows_definition_errors_on_the_form(cast, operator):
    make_tool(cast.project, status="disabled")
    make_agent(cast.project)
    data = form_data(
        operator.get(ADD),
        project=str(cast.project.pk),
        name="Broken",
        definition=json.dumps(agent_then_tool()),
        retry_policy='{"max_attempts": 0}',
        timeout_seconds="120",
        status="active",
    )
    response = operator.post(ADD, data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert any("definition.nodes[1].tool" in message for message in errors["definition"])
    assert any("retry_policy.max_attempts" in message for message in errors["retry_policy"])
    assert not Workflow.objects.exists()


def test_add_refuses_malformed_json(cast, operator):
    data = form_data(
        operator.get(ADD),
        project=str(cast.project.pk),
        name="Typo",
        definition="{nodes: [",
        timeout_seconds="120",
        status="active",
    )
    response = operator.post(ADD, data)
    assert response.status_code == 200
    assert "definition" in response.context["adminform"].form.errors


def test_change_writes_a_version_and_shows_errors(cast, operator):
    workflow = WorkflowFactory(project=cast.project)
    url = change_url(workflow)

    # unchanged save: no new version
    assert operator.post(url, form_data(operator.get(url))).status_code == 302
    assert workflow.versions.count() == 1

    data = form_data(operator.get(url), definition=json.dumps(transform_definition("renamed")))
    assert operator.post(url, data).status_code == 302
    workflow.refresh_from_db()
    assert workflow.version == 2
    assert workflow.definition == transform_definition("renamed")

    bad = transform_definition()
    bad["nodes"][0]["depends_on"] = ["ghost"]
    data = form_data(operator.get(url), definition=json.dumps(bad))
    response = operator.post(url, data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["definition"]
    assert errors == ["definition.nodes[0].depends_on: Unknown node 'ghost'."]
    assert WorkflowVersion.objects.filter(workflow=workflow).count() == 2


def test_change_refuses_a_taken_slug(cast, operator):
    WorkflowFactory(project=cast.project, name="One")
    workflow = WorkflowFactory(project=cast.project, name="Two")
    url = change_url(workflow)
    response = operator.post(url, form_data(operator.get(url), slug="one"))
    assert response.status_code == 200
    assert "slug" in response.context["adminform"].form.errors


def test_actions_call_the_services(cast, operator):
    agent = make_agent(cast.project)
    make_tool(cast.project)
    workflow = WorkflowFactory(project=cast.project, definition=agent_then_tool())
    response = operator.post(
        CHANGELIST, {"action": "pause_workflows", "_selected_action": [workflow.pk]}
    )
    assert response.status_code == 302
    assert Workflow.objects.get(pk=workflow.pk).status == "paused"

    agent.status = "disabled"
    agent.save(update_fields=["status"])
    response = operator.post(
        CHANGELIST,
        {"action": "activate_workflows", "_selected_action": [workflow.pk]},
        follow=True,
    )
    assert "definition.nodes[0].agent" in response.content.decode()
    assert Workflow.objects.get(pk=workflow.pk).status == "paused"
