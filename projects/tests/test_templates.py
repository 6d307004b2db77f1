from __future__ import annotations

import pytest

from agents.models import Agent
from projects.models import Membership, Project
from tools.models import Tool
from workflows.models import Workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def template(cast):
    from agents import services as agents
    from tools import services as tools
    from workflows import services as workflows

    project = cast.project
    project.is_template = True
    project.save(update_fields=["is_template"])
    tool = tools.tool_create(
        actor=cast.owner,
        project=project,
        name="calc",
        kind="builtin",
        config={"function": "calculator"},
    )
    agents.agent_create(
        actor=cast.owner,
        project=project,
        name="Helper",
        slug="helper",
        provider="simulated",
        model="sim",
        tools=[tool.pk],
    )
    workflows.workflow_create(
        actor=cast.owner,
        project=project,
        name="Flow",
        definition={
            "nodes": [
                {"id": "ask", "type": "agent", "agent": "helper", "prompt": "hi"},
                {
                    "id": "sum",
                    "type": "tool",
                    "tool": "calc",
                    "args": {"expression": "1+1"},
                    "depends_on": ["ask"],
                },
            ]
        },
    )
    return project


def test_templates_lists_visible_templates_only(cast, template):
    hidden = Project.objects.create(
        name="Hidden", slug="hidden", owner=cast.outsider, is_template=True
    )
    Membership.objects.create(project=hidden, user=cast.outsider, role="owner")
    body = cast.client("viewer").get("/api/v1/projects/templates/").json()
    assert [p["slug"] for p in body["results"]] == ["acme"]


def test_clone_copies_catalog_and_remaps_tools(cast, template):
    response = cast.client("viewer").post(
        f"/api/v1/projects/{template.pk}/clone", {"name": "My copy"}, format="json"
    )
    assert response.status_code == 201, response.json()
    clone = Project.objects.get(pk=response.json()["id"])
    assert clone.owner == cast.viewer
    assert Membership.objects.get(project=clone).user == cast.viewer
    assert not clone.is_template
    tool = Tool.objects.get(project=clone)
    agent = Agent.objects.get(project=clone)
    assert list(agent.tools.all()) == [tool]
    assert agent.versions.count() == 1 and tool.versions.count() == 1
    workflow = Workflow.objects.get(project=clone)
    assert (
        workflow.current_version.snapshot["definition"]
        == Workflow.objects.get(project=template).definition
    )
    assert not clone.secrets.exists() and not clone.runs.exists()


def test_outsider_cannot_clone_private_project(cast, template):
    response = cast.client("outsider").post(
        f"/api/v1/projects/{template.pk}/clone", {"name": "Steal"}, format="json"
    )
    assert response.status_code == 404
