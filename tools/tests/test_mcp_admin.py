"""The admin of MCP servers: the same checks as the API, the tools discovered on save, the
`Discover tools` action, snapshots shown read-only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from accounts.tests.factories import UserFactory
from projects.tests.factories import ProjectFactory
from tools.models import McpServer
from tools.tests.mcp_server import McpTestServer

pytestmark = pytest.mark.django_db

SERVERS = "/admin/tools/mcpserver/"


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpTestServer]:
    with McpTestServer() as server:
        yield server


@pytest.fixture
def operator(client: Any) -> Any:
    user = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(user)
    client.user = user
    return client


def form(project: Any, **fields: Any) -> dict[str, Any]:
    return {
        "project": str(project.pk),
        "name": "demo",
        "description": "",
        "transport": "streamable_http",
        "url": "",
        "headers": json.dumps({}),
        "enabled": "on",
        "timeout_seconds": "10",
        "command": "",
        "args": "",
        "toolsets-TOTAL_FORMS": "0",
        "toolsets-INITIAL_FORMS": "0",
        "toolsets-MIN_NUM_FORMS": "0",
        "toolsets-MAX_NUM_FORMS": "0",
        **fields,
    }


def test_add_discovers_and_the_action_discovers_again(operator, mcp, allow_loopback):
    project = ProjectFactory()
    assert operator.get(f"{SERVERS}add/").status_code == 200
    response = operator.post(f"{SERVERS}add/", form(project, url=mcp.url))
    assert response.status_code == 302, response.content.decode()[:2000]
    server = McpServer.objects.get()
    assert server.tools_version == 1 and server.created_by == operator.user
    page = operator.get(f"{SERVERS}{server.pk}/change/")
    assert page.status_code == 200 and "echo_header" in page.content.decode()
    assert operator.get(SERVERS).status_code == 200
    done = operator.post(
        SERVERS, {"action": "discover_tools", "_selected_action": [server.pk]}, follow=True
    )
    assert "1 server(s) discovered." in done.content.decode()


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"transport": "stdio", "command": "npx"}, "not enabled"),
        ({"url": "http://10.0.0.1/mcp"}, "private"),
        ({"url": "https://mcp.example.com/", "headers": json.dumps({"X": 1})}, "string"),
    ],
)
def test_bad_input_is_shown_on_the_form(operator, fields, text):
    project = ProjectFactory()
    response = operator.post(f"{SERVERS}add/", form(project, **fields))
    assert response.status_code == 200
    assert text in response.content.decode()
    assert not McpServer.objects.exists()
