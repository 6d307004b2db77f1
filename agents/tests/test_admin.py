from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from agents import services
from agents.models import Agent, AgentVersion
from agents.tests.factories import AgentFactory, tool_for
from projects import services as project_services
from workflows.models import Workflow

pytestmark = pytest.mark.django_db

KEY = "sk-admin-page-must-not-show-this"
CHANGELIST = "/admin/agents/agent/"
ADD = "/admin/agents/agent/add/"


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def change_url(agent: Agent) -> str:
    return f"{CHANGELIST}{agent.pk}/change/"


def management(page: str) -> dict[str, str]:
    """The hidden management-form fields of the page's inline formsets, as rendered."""
    fields = {}
    for tag in re.findall(r"<input[^>]+>", page):
        name = re.search(r'name="([^"]+-(?:TOTAL|INITIAL|MIN_NUM|MAX_NUM)_FORMS)"', tag)
        if name:
            value = re.search(r'value="([^"]*)"', tag)
            fields[name.group(1)] = value.group(1) if value else ""
    return fields


def form_data(page: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Writer",
        "slug": "",
        "description": "",
        "status": "active",
        "provider": "simulated",
        "model": "sim-1",
        "base_url": "",
        "credentials_secret": "",
        "system_prompt": "",
        "temperature": "",
        "max_tokens": "",
        "max_iterations": "8",
        "response_format": "",
        "settings": "{}",
        **management(page),
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def test_pages_load(operator, cast):
    tool = tool_for(cast.project)
    agent = AgentFactory(project=cast.project, tools=[tool.pk], settings={"mode": "echo"})
    version = agent.versions.get()
    for url in (
        CHANGELIST,
        f"{CHANGELIST}?provider=simulated&status=active",
        f"{CHANGELIST}?q=agent",
        ADD,
        change_url(agent),
        f"{CHANGELIST}{agent.pk}/delete/",
        "/admin/agents/agentversion/",
        f"/admin/agents/agentversion/{version.pk}/change/",
    ):
        response = operator.get(url)
        assert response.status_code == 200, url


def test_json_is_shown_formatted(operator, cast):
    agent = AgentFactory(
        project=cast.project, response_format={"type": "object"}, settings={"mode": "echo"}
    )
    page = operator.get(change_url(agent)).content.decode()
    assert "{\n  &quot;type&quot;: &quot;object&quot;\n}" in page
    assert "{\n  &quot;mode&quot;: &quot;echo&quot;\n}" in page


def test_add_goes_through_the_service(operator, cast):
    tool = tool_for(cast.project)
    page = operator.get(ADD).content.decode()
    data = form_data(
        page,
        project=str(cast.project.pk),
        tools=[str(tool.pk)],
        response_format='{"type": "object", "properties": {"a": {"type": "string"}}}',
        temperature="0.4",
    )
    response = operator.post(ADD, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    agent = Agent.objects.get()
    assert agent.slug == "writer"
    assert agent.temperature == 0.4
    assert agent.response_format["type"] == "object"
    assert list(agent.tools.all()) == [tool]
    assert agent.version == 1
    version = agent.versions.get()
    assert version.snapshot["tools"] == [str(tool.pk)]
    assert version.created_by is not None and version.created_by.is_superuser


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"provider": "openai_compatible"}, "needs the server"),
        ({"response_format": '{"type": 5}'}, "Not a valid JSON Schema"),
        ({"response_format": "{not json"}, "Enter a valid JSON"),
        ({"settings": '["a list"]'}, "Must be a JSON object"),
        ({"temperature": "5"}, "from 0 to 2"),
        ({"credentials_secret": "NOPE"}, "No secret named"),
    ],
)
def test_invalid_add_shows_the_service_errors(operator, cast, fields, message):
    page = operator.get(ADD).content.decode()
    response = operator.post(ADD, form_data(page, project=str(cast.project.pk), **fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Agent.objects.exists()


def test_tool_of_another_project_is_refused(operator, cast):
    foreign = tool_for(cast.other_project)
    page = operator.get(ADD).content.decode()
    response = operator.post(
        ADD, form_data(page, project=str(cast.project.pk), tools=[str(foreign.pk)])
    )
    assert response.status_code == 200
    assert "Not a tool of this project" in response.content.decode()
    assert not Agent.objects.exists()


def test_change_writes_a_version_and_keeps_the_project(operator, cast):
    agent = AgentFactory(project=cast.project, name="Writer", slug="writer")
    page = operator.get(change_url(agent)).content.decode()
    data = form_data(page, slug="writer", system_prompt="Write well.")
    response = operator.post(change_url(agent), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    agent.refresh_from_db()
    assert agent.system_prompt == "Write well."
    assert agent.version == 2
    assert agent.project == cast.project
    # saving again unchanged writes no version
    page = operator.get(change_url(agent)).content.decode()
    operator.post(change_url(agent), form_data(page, slug="writer", system_prompt="Write well."))
    assert agent.versions.count() == 2


def test_invalid_change_is_refused(operator, cast):
    agent = AgentFactory(project=cast.project, slug="writer")
    AgentFactory(project=cast.project, slug="taken")
    page = operator.get(change_url(agent)).content.decode()
    response = operator.post(change_url(agent), form_data(page, slug="taken"))
    assert response.status_code == 200
    assert "Taken." in response.content.decode()
    agent.refresh_from_db()
    assert agent.slug == "writer"


def test_delete_goes_through_the_service_and_respects_workflows(operator, cast):
    used = AgentFactory(project=cast.project, slug="used")
    free = AgentFactory(project=cast.project, slug="free")
    Workflow.objects.create(
        project=cast.project,
        name="Digest",
        slug="digest",
        definition={"nodes": [{"id": "a", "type": "agent", "agent": "used"}]},
    )
    page = operator.get(f"{CHANGELIST}{used.pk}/delete/").content.decode()
    assert "Digest" in page
    operator.post(f"{CHANGELIST}{used.pk}/delete/", {"post": "yes"})
    assert Agent.objects.filter(pk=used.pk).exists()
    response = operator.post(f"{CHANGELIST}{free.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Agent.objects.filter(pk=free.pk).exists()


def test_disable_action(operator, cast):
    agent = AgentFactory(project=cast.project)
    response = operator.post(CHANGELIST, {"action": "disable", "_selected_action": [str(agent.pk)]})
    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.status == "disabled"
    assert agent.version == 1


def test_versions_are_read_only(operator, cast):
    agent = AgentFactory(project=cast.project)
    version = agent.versions.get()
    assert operator.get("/admin/agents/agentversion/add/").status_code == 403
    url = f"/admin/agents/agentversion/{version.pk}/change/"
    operator.post(url, {"number": "9"})
    version.refresh_from_db()
    assert version.number == 1
    assert operator.get(f"/admin/agents/agentversion/{version.pk}/delete/").status_code == 403


def test_the_key_never_appears_in_admin_pages(operator, cast):
    project_services.secret_set(project=cast.project, actor=cast.owner, name="LLM", value=KEY)
    agent = AgentFactory(
        project=cast.project, provider="openai", model="gpt-4o", credentials_secret="LLM"
    )
    agent = services.agent_update(agent=agent, actor=cast.owner, description="v2")
    version = AgentVersion.objects.filter(agent=agent).first()
    for url in (
        CHANGELIST,
        change_url(agent),
        "/admin/agents/agentversion/",
        f"/admin/agents/agentversion/{version.pk}/change/",
    ):
        page = operator.get(url).content.decode()
        assert KEY not in page, url
    assert "LLM" in operator.get(change_url(agent)).content.decode()
    assert json.dumps(KEY) not in json.dumps([v.snapshot for v in agent.versions.all()])
