from __future__ import annotations

import json
from typing import Any

import pytest

from accounts.tests.factories import UserFactory
from tools.models import Tool, ToolVersion
from tools.tests.factories import ToolFactory

pytestmark = pytest.mark.django_db

TOOLS = "/admin/tools/tool/"
VERSIONS = "/admin/tools/toolversion/"


@pytest.fixture
def operator(client: Any) -> Any:
    user = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(user)
    client.user = user
    return client


def form(tool: Tool | None = None, **fields: Any) -> dict[str, Any]:
    """The add/change form as a browser posts it (the versions inline is read-only)."""
    versions = list(tool.versions.order_by("-number")) if tool else []
    data = {
        "name": "calc",
        "description": "Arithmetic.",
        "kind": "builtin",
        "config": json.dumps({"function": "calculator"}),
        "parameters": "",
        "status": "active",
        "versions-TOTAL_FORMS": str(len(versions)),
        "versions-INITIAL_FORMS": str(len(versions)),
        "versions-MIN_NUM_FORMS": "0",
        "versions-MAX_NUM_FORMS": "0",
    }
    for index, version in enumerate(versions):
        data[f"versions-{index}-id"] = str(version.pk)
        data[f"versions-{index}-tool"] = str(tool.pk)  # type: ignore[union-attr]
    data.update(fields)
    return data


def test_pages_load(operator, cast):
    tool = ToolFactory(project=cast.project)
    ToolFactory(project=None, is_global=True)
    version = tool.versions.get()
    for url in (
        TOOLS,
        TOOLS + "?kind__exact=builtin&is_global__exact=0",
        TOOLS + "?q=tool",
        TOOLS + "add/",
        f"{TOOLS}{tool.pk}/change/",
        VERSIONS,
        f"{VERSIONS}{version.pk}/change/",
    ):
        assert operator.get(url).status_code == 200, url
    change = operator.get(f"{TOOLS}{tool.pk}/change/").content.decode()
    assert "&quot;function&quot;: &quot;noop&quot;" in change  # config shown as indented JSON
    assert operator.get(VERSIONS + "add/").status_code == 403  # versions are never written here


def test_add_goes_through_the_service(operator, cast):
    response = operator.post(TOOLS + "add/", form(project=str(cast.project.pk)))
    assert response.status_code == 302, response.context["adminform"].form.errors
    tool = Tool.objects.get(name="calc")
    assert tool.created_by == operator.user
    assert tool.version == 1
    assert tool.versions.get().created_by == operator.user
    assert tool.parameters["required"] == ["expression"]  # the service filled the default


def test_add_a_global_tool(operator):
    response = operator.post(TOOLS + "add/", form(is_global="on"))
    assert response.status_code == 302
    assert Tool.objects.get(name="calc").is_global


def test_invalid_add_shows_field_errors(operator, cast):
    response = operator.post(
        TOOLS + "add/",
        form(
            project=str(cast.project.pk),
            name="bad name",
            kind="http",
            config=json.dumps({"method": "GET", "url": "https://x.example/{{ args.q"}),
            parameters="{not json",
        ),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"name", "config", "parameters"}
    assert errors["config"][0].startswith("config.url: Template syntax error")
    assert not Tool.objects.exists()


def test_add_needs_a_project_or_global(operator):
    response = operator.post(TOOLS + "add/", form())
    assert response.status_code == 200
    assert "project" in response.context["adminform"].form.errors


def test_change_records_a_version(operator, cast):
    tool = ToolFactory(project=cast.project, name="calc", config={"function": "calculator"})
    response = operator.post(f"{TOOLS}{tool.pk}/change/", form(tool, description="Now with docs."))
    assert response.status_code == 302
    tool.refresh_from_db()
    assert (tool.description, tool.version) == ("Now with docs.", 2)
    assert tool.versions.get(number=2).created_by == operator.user


def test_invalid_change_is_refused(operator, cast):
    tool = ToolFactory(project=cast.project, name="calc", config={"function": "calculator"})
    response = operator.post(
        f"{TOOLS}{tool.pk}/change/",
        form(tool, config=json.dumps({"function": "calculator", "extra": 1})),
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["config"] == ["config.extra: Unknown field."]
    tool.refresh_from_db()
    assert tool.version == 1


def test_disable_action_uses_the_service(operator, cast):
    tool = ToolFactory(project=cast.project)
    response = operator.post(TOOLS, {"action": "disable_tools", "_selected_action": [str(tool.pk)]})
    assert response.status_code == 302
    tool.refresh_from_db()
    assert (tool.status, tool.version) == ("disabled", 2)


def test_delete_goes_through_the_service(operator, cast):
    tool = ToolFactory(project=cast.project)
    response = operator.post(f"{TOOLS}{tool.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Tool.objects.exists()
    assert not ToolVersion.objects.exists()
