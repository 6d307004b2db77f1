"""Spark-Ops serves a project's workflows as MCP tools (`/api/v1/projects/{id}/mcp`). The
official SDK's client (`mcp.Client` over `mcp.client.streamable_http`) talks to a live gunicorn
and a Celery worker in their own processes, on a redis-server of the module's own: tools
listed, a workflow called that ends within the wait (its output), a slow one (its run id, then
`get_run`), a bad argument, a run start a policy denies, an outsider's key, Idempotency-Key
replays, both protocol eras, and README's client configuration."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from accounts.services import api_key_create
from policies.tests.factories import make_policy
from runs.models import Run
from runs.tests.factories import make_workflow, transform
from sparkops.audit import AuditEvent
from sparkops.testing.engine import wait_for_run
from sparkops.testing.processes import RedisServer, WebProcess, WorkerProcess

WAIT = 3.0  # SPARKOPS_MCP_WAIT of the live server


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[WebProcess]:
    redis = RedisServer()
    redis.start()
    web = WebProcess(
        redis.url,
        threads=8,
        extra_env={
            "REDIS_URL": redis.url,
            "SPARKOPS_MCP_WAIT": str(WAIT),
            "SPARKOPS_HOOK_WAIT_POLL": "0.05",
        },
    )
    worker = WorkerProcess(redis.url, concurrency=4)
    try:
        with django_db_blocker.unblock():
            web.start()
            worker.start()
        yield web
    finally:
        web.stop()
        worker.stop()
        redis.close()


def endpoint(server: WebProcess, project: Any) -> str:
    return f"{server.url}/api/v1/projects/{project.pk}/mcp"


def key_of(user: Any) -> str:
    return api_key_create(user=user, name="mcp")[1]


def session(
    url: str,
    headers: dict[str, str],
    work: Callable[[Client], Awaitable[Any]],
    mode: str = "auto",
) -> Any:
    """Connect the SDK's client with these HTTP headers and run `work` on it."""

    async def main() -> Any:
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=mode) as client:
                return await work(client)

    return asyncio.run(main())


def greeter(cast: Any) -> Any:
    return make_workflow(
        cast.project,
        cast.owner,
        [transform("greet", "Hello {{ input.name }}")],
        input_schema={
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
        output={"greeting": "{{ steps.greet.output }}"},
        name="Greeter",
        slug="greeter",
        description="Greets someone.",
    )


def gated(cast: Any) -> Any:
    # Waits for a person: never ends within the wait.
    return make_workflow(
        cast.project,
        cast.owner,
        [
            {"id": "review", "type": "approval", "message": "Ship it?"},
            transform("done", 1, "review"),
        ],
        name="Gated",
        slug="gated",
    )


live = pytest.mark.django_db(transaction=True)


@live
def test_tools_are_the_active_workflows_and_get_run(server: WebProcess, cast: Any) -> None:
    greeter(cast)
    gated(cast)
    paused = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="P", slug="paused")
    paused.status = "paused"
    paused.save(update_fields=["status"])
    make_workflow(cast.other_project, cast.outsider, [transform("a", 1)], name="X", slug="theirs")

    async def work(client: Client) -> Any:
        return await client.list_tools()

    listed = session(endpoint(server, cast.project), {"X-API-Key": key_of(cast.viewer)}, work)
    tools = {tool.name: tool for tool in listed.tools}
    assert sorted(tools) == ["gated", "get_run", "greeter"]
    assert tools["greeter"].description == "Greets someone."
    assert tools["greeter"].input_schema == {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
    }
    assert tools["gated"].input_schema == {"type": "object"}
    assert tools["get_run"].input_schema["required"] == ["run_id"]


@live
@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_a_call_that_ends_within_the_wait_returns_the_output(
    server: WebProcess, cast: Any, mode: str
) -> None:
    """Both protocol eras: 2026-07-28's per-request envelope ("auto" probes it first) and the
    initialize handshake of the earlier revisions (what most desktop clients speak today)."""
    greeter(cast)

    async def work(client: Client) -> Any:
        return await client.call_tool("greeter", {"name": "Ada"})

    result = session(
        endpoint(server, cast.project), {"X-API-Key": key_of(cast.developer)}, work, mode
    )
    assert result.is_error is False, result
    answer = result.structured_content
    assert answer["status"] == "succeeded" and answer["output"] == {"greeting": "Hello Ada"}
    assert json.loads(result.content[0].text) == answer
    run = Run.objects.get(pk=answer["run"])
    assert run.trigger == "mcp" and run.created_by == cast.developer
    assert answer["url"] == f"{server.url}/api/v1/runs/{run.pk}"
    assert answer["stream"] == f"{server.url}/api/v1/runs/{run.pk}/stream"
    # Audited as any run start.
    assert AuditEvent.objects.filter(action="run.start", object_id=str(run.pk)).exists()


@live
def test_a_run_that_fails_within_the_wait_is_a_tool_error_with_its_error(
    server: WebProcess, cast: Any
) -> None:
    make_workflow(cast.project, cast.owner, [transform("bad", "{{ 1 / 0 }}")], slug="divides")

    async def work(client: Client) -> Any:
        return await client.call_tool("divides", {})

    result = session(endpoint(server, cast.project), {"X-API-Key": key_of(cast.developer)}, work)
    answer = result.structured_content
    assert result.is_error is True
    assert answer["status"] == "failed" and answer["output"] is None
    assert answer["error"]["step"] == "bad"


@live
def test_a_slow_run_answers_its_id_and_get_run_follows_it(server: WebProcess, cast: Any) -> None:
    gated(cast)
    url, headers = endpoint(server, cast.project), {"X-API-Key": key_of(cast.developer)}

    async def start(client: Client) -> Any:
        return await client.call_tool("gated", {})

    result = session(url, headers, start)
    answer = result.structured_content
    assert result.is_error is False and "output" not in answer, answer
    assert answer["status"] in ("pending", "running", "waiting_approval")
    assert "get_run" in answer["next"]
    run_id = answer["run"]
    wait_for_run(run_id, statuses=("waiting_approval",))

    async def follow(client: Client) -> Any:
        return await client.call_tool("get_run", {"run_id": run_id})

    got = session(url, headers, follow).structured_content
    assert got["status"] == "waiting_approval" and got["output"] is None
    assert got["workflow"] == "gated" and got["url"].endswith(f"/api/v1/runs/{run_id}")

    # Approved through the live server's API, the run ends; get_run shows it.
    approved = httpx2.post(
        f"{server.url}/api/v1/runs/{run_id}/steps/review/approve", json={}, headers=headers
    )
    assert approved.status_code == 200, approved.content
    wait_for_run(run_id)
    done = session(url, headers, follow).structured_content
    assert done["status"] == "succeeded", done


@live
def test_bad_arguments_unknown_tools_and_runs_are_clear_errors(
    server: WebProcess, cast: Any
) -> None:
    greeter(cast)
    url, headers = endpoint(server, cast.project), {"X-API-Key": key_of(cast.developer)}

    async def work(client: Client) -> Any:
        bad = await client.call_tool("greeter", {"name": 7})
        missing = await client.call_tool("get_run", {"run_id": "not-a-uuid"})
        unknown = ""
        try:
            await client.call_tool("nope", {})
        except MCPError as exc:  # the SDK raises the JSON-RPC error
            unknown = str(exc)
        return bad, missing, unknown

    bad, missing, unknown = session(url, headers, work)
    assert bad.is_error is True
    assert bad.structured_content["type"] == "validation_error"
    assert "name" in json.dumps(bad.structured_content["errors"])
    assert missing.is_error is True and "UUID" in missing.structured_content["detail"]
    assert "Unknown tool: nope" in unknown
    assert not Run.objects.exists()


@live
def test_a_run_start_a_policy_denies_is_a_tool_error(server: WebProcess, cast: Any) -> None:
    workflow = gated(cast)
    make_policy(cast.project, cast.owner, "max_concurrent_runs", {"max_runs": 1})
    url, headers = endpoint(server, cast.project), {"X-API-Key": key_of(cast.developer)}

    async def work(client: Client) -> Any:
        first = await client.call_tool("gated", {})
        second = await client.call_tool("gated", {})
        return first, second

    first, second = session(url, headers, work)
    assert first.is_error is False
    assert second.is_error is True
    assert second.structured_content["type"] == "policy_denied", second.structured_content
    assert second.structured_content["policy"]["kind"] == "max_concurrent_runs"
    assert Run.objects.filter(workflow=workflow).count() == 1


@live
def test_a_viewer_lists_but_cannot_start_runs(server: WebProcess, cast: Any) -> None:
    greeter(cast)

    async def work(client: Client) -> Any:
        return await client.call_tool("greeter", {"name": "Ada"})

    result = session(endpoint(server, cast.project), {"X-API-Key": key_of(cast.viewer)}, work)
    assert result.is_error is True
    assert result.structured_content["type"] == "permission_denied"
    assert not Run.objects.exists()


@live
def test_an_outsider_or_a_bad_key_is_refused(server: WebProcess, cast: Any) -> None:
    greeter(cast)
    url = endpoint(server, cast.project)

    async def work(client: Client) -> Any:
        return await client.list_tools()

    # The SDK's client reports the HTTP 404 as "Not Found", a 401 as an error response.
    for headers, message in (
        ({"X-API-Key": key_of(cast.outsider)}, "Not Found"),
        ({"X-API-Key": "spk_not_a_key"}, "error response"),
        ({}, "error response"),
    ):
        with pytest.raises(BaseExceptionGroup) as refused:
            session(url, headers, work)
        errors = leaves(refused.value)
        assert [type(e) for e in errors] == [MCPError] and message in str(errors[0]), errors
    # The same with plain HTTP: the API's JSON errors.
    with httpx2.Client() as http:
        outsider = http.post(url, json={}, headers={"X-API-Key": key_of(cast.outsider)})
        assert outsider.status_code == 404 and outsider.json()["type"] == "not_found"
        for headers in ({"X-API-Key": "spk_not_a_key"}, {}):
            answer = http.post(url, json={}, headers=headers)
            assert answer.status_code == 401, answer.text
            assert answer.json()["type"] in ("authentication_failed", "not_authenticated")


@live
def test_an_idempotency_key_replays_the_first_run(server: WebProcess, cast: Any) -> None:
    greeter(cast)
    url, key = endpoint(server, cast.project), key_of(cast.developer)

    async def twice(client: Client) -> Any:
        meta: Any = {"io.sparkops/idempotency-key": "order-1"}
        first = await client.call_tool("greeter", {"name": "Ada"}, meta=meta)
        again = await client.call_tool("greeter", {"name": "Ada"}, meta=meta)
        other = await client.call_tool("greeter", {"name": "Bob"}, meta=meta)
        return first, again, other

    first, again, other = session(url, {"X-API-Key": key}, twice)
    assert first.structured_content["replayed"] is False
    assert again.structured_content["replayed"] is True
    assert again.structured_content["run"] == first.structured_content["run"]
    assert again.structured_content["output"] == {"greeting": "Hello Ada"}
    assert other.is_error is True
    assert other.structured_content["type"] == "idempotency_key_reused"

    # The header does the same for every call of the request.
    async def once(client: Client) -> Any:
        return await client.call_tool("greeter", {"name": "Cy"})

    header = {"X-API-Key": key, "Idempotency-Key": "order-2"}
    one = session(url, header, once).structured_content
    two = session(url, header, once).structured_content
    assert one["run"] == two["run"] and two["replayed"] is True
    assert Run.objects.count() == 2


@live
def test_readme_client_configuration_connects(server: WebProcess, cast: Any) -> None:
    """README's `mcpServers` snippet, with its placeholders filled in, connects as written."""
    greeter(cast)
    readme = (Path(django_settings.BASE_DIR) / "README.md").read_text()
    section = readme.split("### Connect an MCP client", 1)[1]
    snippet = re.search(r"```json\n(.*?)```", section, re.S)
    assert snippet is not None
    text = (
        snippet.group(1)
        .replace("http://127.0.0.1:8000", server.url)
        .replace("PROJECT_ID", str(cast.project.pk))
        .replace("YOUR_API_KEY", key_of(cast.developer))
    )
    config = json.loads(text)["mcpServers"]["spark-ops"]
    assert config["type"] == "http"

    async def work(client: Client) -> Any:
        return await client.call_tool("greeter", {"name": "Ada"})

    result = session(config["url"], config["headers"], work)
    assert result.structured_content["output"] == {"greeting": "Hello Ada"}

    # The Python example, run as written (inside a coroutine) against a workflow of its name.
    make_workflow(
        cast.project,
        cast.owner,
        [transform("t", "About {{ input.topic }}")],
        output={"summary": "{{ steps.t.output }}"},
        name="R",
        slug="research-and-summarize",
    )
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None
    code = "async def example():\n" + "".join(
        f"    {line}\n" for line in example.group(1).splitlines()
    )
    scope: dict[str, Any] = {"URL": config["url"], "KEY": config["headers"]["X-API-Key"]}
    exec(code, scope)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        asyncio.run(scope["example"]())
    assert out.getvalue() == "succeeded {'summary': 'About MCP'}\n"


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


# --- in process: scoping and the cost of tools/list -------------------------------------------

TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


@pytest.mark.django_db
def test_tools_list_costs_the_same_queries_for_any_number_of_workflows(cast: Any) -> None:
    url = f"/api/v1/projects/{cast.project.pk}/mcp"
    client = cast.client("viewer")

    def count() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            response = client.post(url, TOOLS_LIST, format="json")
        assert response.status_code == 200, response.content
        return len(queries), len(response.json()["result"]["tools"])

    make_workflow(cast.project, cast.owner, [transform("a", 1)], name="one", slug="one")
    few, listed = count()
    assert listed == 2
    for i in range(5):
        make_workflow(cast.project, cast.owner, [transform("a", 1)], name=f"n{i}", slug=f"n{i}")
    many, listed = count()
    assert listed == 7
    assert many == few <= 5, (few, many)


@pytest.mark.django_db
def test_a_workflow_slugged_get_run_does_not_shadow_the_builtin(cast: Any) -> None:
    make_workflow(cast.project, cast.owner, [transform("a", 1)], name="g", slug="get_run")
    response = cast.client("viewer").post(
        f"/api/v1/projects/{cast.project.pk}/mcp", TOOLS_LIST, format="json"
    )
    names = [tool["name"] for tool in response.json()["result"]["tools"]]
    assert names == ["workflow.get_run", "get_run"]


@pytest.mark.django_db
def test_get_run_sees_only_the_projects_runs(cast: Any) -> None:
    from runs.tests.factories import finished_run

    theirs = finished_run(cast)
    Run.objects.filter(pk=theirs.pk).update(project=cast.other_project)
    body = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "get_run", "arguments": {"run_id": str(theirs.pk)}},
    }
    response = cast.client("owner").post(
        f"/api/v1/projects/{cast.project.pk}/mcp", body, format="json"
    )
    result = response.json()["result"]
    assert result["isError"] is True
    assert result["structuredContent"]["type"] == "not_found"


@pytest.mark.django_db
def test_not_json_rpc_is_a_json_400_and_get_is_405(cast: Any) -> None:
    url = f"/api/v1/projects/{cast.project.pk}/mcp"
    bad = cast.client("owner").post(url, {"hello": 1}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == -32602
    garbage = cast.client("owner").post(url, b"{not json", content_type="application/json")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
    plain = cast.client("owner").generic("POST", url, b"hello", content_type="text/plain")
    assert plain.status_code == 400 and plain.json()["type"] == "invalid_request"
    assert "Content-Type" in plain.json()["detail"]
    assert cast.client("owner").get(url).status_code == 405
    assert cast.client("owner").delete(url).status_code == 405


@pytest.mark.django_db
def test_a_public_project_lists_its_tools_to_anyone_but_runs_need_a_developer(cast: Any) -> None:
    greeter(cast)
    type(cast.project).objects.filter(pk=cast.project.pk).update(is_public=True)
    response = cast.client("outsider").post(
        f"/api/v1/projects/{cast.project.pk}/mcp", TOOLS_LIST, format="json"
    )
    assert response.status_code == 200, response.content
    assert [t["name"] for t in response.json()["result"]["tools"]] == ["greeter", "get_run"]
    refused = _call(cast, "outsider", "greeter", {"name": "Ada"})
    assert refused["isError"] is True
    assert refused["structuredContent"]["type"] == "permission_denied"
    assert not Run.objects.exists()


def _call(cast: Any, who: str, name: str, arguments: dict[str, Any], **meta: Any) -> Any:
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": meta},
    }
    response = cast.client(who).post(f"/api/v1/projects/{cast.project.pk}/mcp", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()["result"]


@pytest.mark.django_db
def test_a_call_into_an_archived_project_is_a_tool_error_naming_the_state(cast: Any) -> None:
    from projects import services as project_services

    greeter(cast)
    project_services.project_set_status(project=cast.project, actor=cast.owner, status="archived")
    result = _call(cast, "developer", "greeter", {"name": "Ada"})
    assert result["isError"] is True
    answer = result["structuredContent"]
    assert answer["type"] == "conflict" and answer["project_status"] == "archived"
    assert "is archived" in answer["detail"]
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_the_wait_meta_answers_at_once_and_is_checked(cast: Any) -> None:
    greeter(cast)
    started = _call(cast, "developer", "greeter", {"name": "Ada"}, **{"io.sparkops/wait": 0})
    assert started["isError"] is False
    assert started["structuredContent"]["status"] == "pending"
    assert Run.objects.get().trigger == "mcp"
    for bad in (-1, "soon", True):
        refused = _call(cast, "developer", "greeter", {"name": "Ada"}, **{"io.sparkops/wait": bad})
        assert refused["isError"] is True
        assert refused["structuredContent"]["type"] == "validation_error"
    key = _call(cast, "developer", "greeter", {}, **{"io.sparkops/idempotency-key": 5})
    assert key["structuredContent"]["type"] == "validation_error"
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_an_api_key_in_the_authorization_header_works_too(cast: Any) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key_of(cast.viewer)}")
    response = client.post(f"/api/v1/projects/{cast.project.pk}/mcp", TOOLS_LIST, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["result"]["tools"][-1]["name"] == "get_run"
