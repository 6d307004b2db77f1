"""MCP servers as tool sources, the API and admin side: create (discovers the tools), discover
again (a new snapshot only when the tools changed), test, snapshots, clear 4xx for bad input,
a 502 naming the cause for an unreachable server, agents attaching tools, workflows naming
them. Against a real MCP server (the SDK's MCPServer under uvicorn, tools.tests.mcp_server)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accounts.tests.factories import UserFactory
from agents import services as agent_services
from agents.models import Agent
from conftest import client_for
from policies.models import AuditEvent
from projects import services as project_services
from projects.secrets import SecretBag
from sparkops.errors import InvalidInput
from tools import mcp_services
from tools import services as tool_services
from tools.models import McpServer, McpToolset
from tools.tests.mcp_server import McpTestServer
from workflows import services as workflow_services

pytestmark = pytest.mark.django_db

URL = "/api/v1/mcp-servers/"


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpTestServer]:
    with McpTestServer() as server:
        yield server


@pytest.fixture
def closed_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"


def create(cast: Any, **fields: Any) -> Any:
    body = {"project": str(cast.project.pk), "name": "demo", **fields}
    return cast.client("developer").post(URL, body, format="json")


def test_create_discovers_the_tools(cast, mcp, allow_loopback):
    response = create(cast, url=mcp.url, description="Test server")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tools_version"] == 1 and body["discovery_error"] == ""
    assert body["transport"] == "streamable_http" and body["discovered_at"]
    tools = {tool["name"]: tool for tool in body["tools"]}
    assert sorted(tools) == ["add", "echo_header", "fail", "hang"]
    assert tools["add"]["full_name"] == "demo__add"
    assert tools["add"]["input_schema"]["required"] == ["a", "b"]
    server = McpServer.objects.get(pk=body["id"])
    assert server.created_by == cast.developer
    assert AuditEvent.objects.filter(action="mcp_server.create").count() == 1

    got = cast.client("viewer").get(f"{URL}{server.pk}/")
    assert got.status_code == 200 and got.json()["tools"] == body["tools"]


def test_discover_keeps_the_snapshot_until_the_tools_change(cast, mcp, allow_loopback):
    server = McpServer.objects.get(pk=create(cast, url=mcp.url).json()["id"])
    again = cast.client("developer").post(f"{URL}{server.pk}/discover")
    assert again.status_code == 200 and again.json()["tools_version"] == 1
    # The server's tools change (here: the stored snapshot differs from what it lists).
    McpToolset.objects.filter(server=server).update(digest="changed")
    changed = cast.client("developer").post(f"{URL}{server.pk}/discover")
    assert changed.json()["tools_version"] == 2
    listed = cast.client("viewer").get(f"{URL}{server.pk}/toolsets").json()
    assert [item["number"] for item in listed["results"]] == [2, 1]
    one = cast.client("viewer").get(f"{URL}{server.pk}/toolsets/1")
    assert one.status_code == 200 and len(one.json()["tools"]) == 4
    missing = cast.client("viewer").get(f"{URL}{server.pk}/toolsets/9")
    assert missing.status_code == 404 and missing.json()["type"] == "not_found"


def test_an_unreachable_server_is_saved_with_its_error_and_discover_is_a_502(
    cast, closed_url, allow_loopback
):
    response = create(cast, url=closed_url)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tools_version"] == 0 and body["tools"] == []
    assert "demo" in body["discovery_error"]
    again = cast.client("developer").post(f"{URL}{body['id']}/discover")
    assert again.status_code == 502
    assert again.json()["type"] == "mcp_unavailable"
    tested = cast.client("developer").post(f"{URL}{body['id']}/test")
    assert tested.status_code == 200
    assert tested.json()["ok"] is False and tested.json()["error"]


def test_the_test_endpoint_lists_without_storing(cast, mcp, allow_loopback):
    server = McpServer.objects.get(pk=create(cast, url=mcp.url).json()["id"])
    response = cast.client("developer").post(f"{URL}{server.pk}/test")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["error"] is None
    assert body["tools"] == ["add", "echo_header", "fail", "hang"]
    assert McpToolset.objects.filter(server=server).count() == 1


def test_internal_targets_are_refused_unless_allow_listed(cast, mcp):
    response = create(cast, url=mcp.url)  # 127.0.0.1, not on the allow-list
    assert response.status_code == 400
    assert "loopback" in str(response.json()["errors"]["url"])
    assert not McpServer.objects.exists()
    # A hostname is checked when it resolves: saved, and its discovery says why it failed.
    named = create(cast, url=mcp.url.replace("127.0.0.1", "localhost"), name="named")
    assert named.status_code == 201
    assert "loopback" in named.json()["discovery_error"]


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"transport": "stdio", "command": "npx"}, "transport", "not enabled"),
        ({"command": "npx"}, "command", "Only stdio"),
        ({"transport": "carrier-pigeon"}, "transport", "not a valid choice"),
        ({"url": "file:///etc/passwd"}, "url", "scheme"),
        ({"url": "http://169.254.169.254/"}, "url", "metadata"),
        ({"name": "Bad Name"}, "name", "lower-case"),
        ({"name": "a__b"}, "name", "__"),
        ({"headers": {"X-A": 1}}, "headers.X-A", "string"),
        ({"headers": ["x"]}, "headers", "JSON object"),
        ({"headers": {"Bad Header": "x"}}, "headers.Bad Header", "header name"),
        ({"timeout_seconds": 0}, "timeout_seconds", "over 0"),
    ],
)
def test_bad_input_is_a_clear_400(cast, fields, field, text):
    response = create(cast, **{"url": "https://mcp.example.com/mcp", **fields})
    assert response.status_code == 400, response.content
    body = response.json()
    assert text in str(body["errors"][field]), body
    assert not McpServer.objects.exists()


def test_names_are_unique_in_a_project_and_roles_apply(cast, mcp, allow_loopback):
    assert create(cast, url=mcp.url).status_code == 201
    taken = create(cast, url=mcp.url)
    assert taken.status_code == 409 and taken.json()["type"] == "conflict"
    body = {"project": str(cast.project.pk), "name": "other", "url": mcp.url}
    assert cast.client("viewer").post(URL, body, format="json").status_code == 403
    outsider = client_for(UserFactory()).post(URL, body, format="json")
    assert outsider.status_code == 400  # not a project of theirs: "does not exist"


def test_update_and_delete(cast, mcp, allow_loopback):
    server_id = create(cast, url=mcp.url).json()["id"]
    patched = cast.client("developer").patch(
        f"{URL}{server_id}/", {"enabled": False, "timeout_seconds": 5}, format="json"
    )
    assert patched.status_code == 200, patched.content
    assert patched.json()["enabled"] is False and patched.json()["timeout_seconds"] == 5
    bad = cast.client("developer").patch(f"{URL}{server_id}/", {"url": "ftp://x"}, format="json")
    assert bad.status_code == 400
    assert cast.client("developer").delete(f"{URL}{server_id}/").status_code == 204
    assert not McpServer.objects.exists()


def test_a_disabled_server_offers_no_tools(cast, mcp, allow_loopback):
    server = McpServer.objects.get(pk=create(cast, url=mcp.url).json()["id"])
    assert mcp_services.mcp_tool_named(cast.project.pk, "demo__add") is not None
    mcp_services.mcp_server_update(server=server, actor=cast.owner, enabled=False)
    assert mcp_services.mcp_tool_named(cast.project.pk, "demo__add") is None
    refused = cast.client("developer").post(f"{URL}{server.pk}/test").json()
    assert refused["ok"] is False and "disabled" in refused["error"]


def test_list_query_count_is_constant(cast, django_assert_num_queries):
    def make(index: int) -> None:
        server = McpServer.objects.create(
            project=cast.project, name=f"s{index}", url="https://mcp.example.com/", tools_version=1
        )
        McpToolset.objects.create(server=server, number=1, tools=[], digest=str(index))

    make(0)
    client = client_for(cast.viewer)
    # auth user, count, page of servers (project joined), their snapshots (one prefetch)
    with django_assert_num_queries(4):
        assert client.get(URL).json()["count"] == 1
    for index in range(1, 11):
        make(index)
    with django_assert_num_queries(4):
        assert client.get(URL).json()["count"] == 11


def test_agents_attach_all_or_named_tools(cast, mcp, allow_loopback):
    create(cast, url=mcp.url)
    base = {"project": str(cast.project.pk), "provider": "simulated", "model": "sim-1"}
    client = cast.client("developer")

    def agent(slug: str, mcp_tools: Any) -> Any:
        body = {**base, "name": slug, "slug": slug, "mcp_tools": mcp_tools}
        return client.post("/api/v1/agents/", body, format="json")

    named = agent("named", [{"server": "demo", "tools": ["add"]}])
    assert named.status_code == 201, named.content
    assert named.json()["mcp_tools"] == [{"server": "demo", "tools": ["add"]}]
    every = agent("every", [{"server": "demo", "tools": None}])
    assert every.status_code == 201
    tools = mcp_services.mcp_tools_of(cast.project.pk, every.json()["mcp_tools"])
    assert sorted(t.name for t in tools) == [
        "demo__add",
        "demo__echo_header",
        "demo__fail",
        "demo__hang",
    ]
    for bad, text in (
        ([{"server": "nope"}], "no MCP server 'nope'"),
        ([{"server": "demo", "tools": ["missing"]}], "missing"),
        ({"server": "demo"}, "Must be a list"),
        ([{"server": "demo", "extra": 1}], "must be"),
    ):
        response = agent("bad", bad)
        assert response.status_code == 400, (bad, response.content)
        assert text in str(response.json()["errors"]["mcp_tools"]), response.json()
    updated = agent_services.agent_update(
        agent=Agent.objects.get(slug="named"), actor=cast.owner, mcp_tools=[]
    )
    assert updated.mcp_tools == []


def test_workflows_name_mcp_tools(cast, mcp, allow_loopback):
    create(cast, url=mcp.url)

    def definition(tool: str) -> dict[str, Any]:
        return {"nodes": [{"id": "a", "type": "tool", "tool": tool, "args": {"a": 1, "b": 2}}]}

    workflow_services.workflow_validate(project=cast.project, definition=definition("demo__add"))
    with pytest.raises(InvalidInput) as excinfo:
        workflow_services.workflow_validate(
            project=cast.project, definition=definition("demo__nope")
        )
    assert "Unknown tool 'demo__nope'" in str(excinfo.value.errors)


def test_a_cloned_project_keeps_its_mcp_servers_and_what_names_them(cast, mcp, allow_loopback):
    project_services.secret_create(project=cast.project, actor=cast.owner, name="T", value="t1")
    create(cast, url=mcp.url, headers={"Authorization": "Bearer {{ secrets.T }}"})
    agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="A",
        slug="a",
        provider="simulated",
        model="sim-1",
        mcp_tools=[{"server": "demo", "tools": ["add"]}],
    )
    clone = workflow_services.project_clone(project=cast.project, actor=cast.owner, name="Copy")
    server = McpServer.objects.get(project=clone)
    assert server.headers == {"Authorization": "Bearer {{ secrets.T }}"}
    assert server.tools_version == 1 and server.toolsets.get().number == 1
    assert [t.name for t in mcp_services.mcp_tools_of(clone.pk, [{"server": "demo"}])] == [
        "demo__add",
        "demo__echo_header",
        "demo__fail",
        "demo__hang",
    ]
    assert Agent.objects.get(project=clone).mcp_tools == [{"server": "demo", "tools": ["add"]}]


STDIO_SCRIPT = str(Path(__file__).with_name("mcp_stdio_server.py"))


def test_stdio_servers_run_only_allowed_commands(cast, settings):
    settings.SPARKOPS_MCP_STDIO_COMMANDS = [sys.executable]
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="K", value="stdio-secret-1"
    )
    refused = create(cast, transport="stdio", command="/bin/sh", args=["-c", "id"])
    assert refused.status_code == 400
    assert "Not an allowed command" in str(refused.json()["errors"]["command"])
    response = create(
        cast,
        transport="stdio",
        command=sys.executable,
        args=[STDIO_SCRIPT],
        headers={"API_KEY": "{{ secrets.K }}"},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["discovery_error"] == "" and body["url"] == ""
    assert sorted(t["name"] for t in body["tools"]) == ["add", "env"]
    server = McpServer.objects.get(pk=body["id"])
    tool = mcp_services.mcp_tool_named(cast.project.pk, "demo__env")
    result = tool_services.tool_execute(
        tool=tool, arguments={"name": "API_KEY"}, secrets=SecretBag(cast.project), timeout=20
    )
    assert result.ok and result.output == {"result": "***"}  # it got the secret; redacted
    # The operator takes the command off the list: refused at call time, before running it.
    settings.SPARKOPS_MCP_STDIO_COMMANDS = ["/usr/bin/other"]
    tested = cast.client("developer").post(f"{URL}{server.pk}/test").json()
    assert tested["ok"] is False and "not allowed" in tested["error"]


def test_client_failures_are_clear(cast, mcp, allow_loopback, settings):
    from tools import mcp_client

    server = McpServer(project=cast.project, name="c", url=mcp.url)
    secrets = SecretBag(cast.project)
    unknown = mcp_client.call_tool(server, secrets, "nope", {}, 5)  # a stale snapshot
    assert unknown.is_error and "nope" in str(unknown.output)
    settings.SPARKOPS_OUTBOUND_MAX_BYTES = 200  # the egress size cap applies to MCP answers
    with pytest.raises(mcp_client.McpFailure) as excinfo:
        mcp_client.list_tools(server, secrets, 5)
    assert "too large" in excinfo.value.message and excinfo.value.retryable is False
    project_services.secret_create(project=cast.project, actor=cast.owner, name="NL", value="a\nb")
    server.headers = {"X-Bad": "{{ secrets.NL }}"}
    with pytest.raises(mcp_client.McpFailure, match="newline"):
        mcp_client.list_tools(server, secrets, 5)
    server.headers = {"X-Missing": "{{ secrets.MISSING }}"}
    with pytest.raises(mcp_client.McpFailure, match="MISSING"):
        mcp_client.list_tools(server, secrets, 5)
