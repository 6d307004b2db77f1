"""MCP tools in runs, on the real worker: a workflow tool step and an agent's tool-calling loop
(the real `openai` SDK against the fake provider) call tools of an MCP server the test starts
with the official SDK (tools.tests.mcp_server), through the same engine path as every tool:
arguments checked against the server's input schema, deny lists, approval pauses, secrets in
headers redacted, a failing tool, a slow tool past its timeout (retried: the transport)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from policies.tests.factories import make_policy
from projects import services as project_services
from runs import services
from runs.tests.conftest import events_of
from runs.tests.factories import make_workflow
from runs.tests.test_engine_agents import agent_workflow, make_agent, tool_results
from sparkops.testing.engine import wait_for_run
from tools import mcp_services
from tools.tests.mcp_server import McpTestServer

pytestmark = pytest.mark.usefixtures("engine")

FAST_RETRY = {"max_attempts": 2, "backoff_seconds": 0.05, "max_backoff_seconds": 0.1}


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpTestServer]:
    with McpTestServer() as server:
        yield server


@pytest.fixture
def demo(cast, mcp):
    mcp.calls.clear()
    return mcp_services.mcp_server_create(
        actor=cast.owner, project=cast.project, name="demo", url=mcp.url, timeout_seconds=5
    )


def tool_run(cast, tool, args, **node):
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [{"id": "act", "type": "tool", "tool": tool, "args": args, **node}],
        output={"result": "{{ steps.act.output }}"},
    )
    run = services.run_create(workflow=workflow, input={"b": 3}, actor=cast.owner)
    return wait_for_run(run.pk)


def test_a_workflow_tool_step_calls_an_mcp_tool(cast, mcp, demo):
    assert (demo.tools_version, demo.discovery_error) == (1, "")
    run = tool_run(cast, "demo__add", {"a": 2, "b": "{{ input.b }}"})
    assert run.status == "succeeded", run.error
    assert run.output == {"result": {"sum": 5}}
    assert mcp.calls == [{"tool": "add", "a": 2, "b": 3}]
    (event,) = events_of(run, "tool.call")
    payload = event.payload
    assert payload["tool"] == "demo__add" and payload["ok"] is True
    assert payload["mcp_server"] == "demo" and payload["mcp_tool"] == "add"
    assert payload["mcp_tools_version"] == 1 and payload["mcp_server_id"] == demo.pk


def test_the_older_sse_transport(cast, mcp):
    mcp.calls.clear()
    mcp_services.mcp_server_create(
        actor=cast.owner, project=cast.project, name="legacy", url=mcp.sse_url, transport="sse"
    )
    run = tool_run(cast, "legacy__add", {"a": 1, "b": 1})
    assert run.status == "succeeded", run.error
    assert run.output == {"result": {"sum": 2}}


def test_arguments_are_checked_against_the_input_schema_before_the_call(cast, mcp, demo):
    run = tool_run(cast, "demo__add", {"a": "two", "b": 3})
    assert run.status == "failed"
    step = run.steps.get(node_id="act")
    assert step.error["type"] == "validation_error"
    assert "arguments.a" in json.dumps(step.error)
    assert mcp.calls == []


def test_a_failing_tool_is_a_step_error_not_retried(cast, mcp, demo):
    run = tool_run(cast, "demo__fail", {"reason": "nope"}, retry=FAST_RETRY)
    assert run.status == "failed"
    step = run.steps.get(node_id="act")
    assert step.error["type"] == "tool_error"
    assert "refused: nope" in step.error["message"]
    assert step.attempt == 1
    assert mcp.calls == [{"tool": "fail", "reason": "nope"}]


def test_a_slow_tool_past_its_timeout_is_retried_then_fails(cast, mcp, demo):
    mcp_services.mcp_server_update(server=demo, actor=cast.owner, timeout_seconds=0.5)
    run = tool_run(cast, "demo__hang", {}, retry=FAST_RETRY)
    assert run.status == "failed"
    step = run.steps.get(node_id="act")
    assert step.error["type"] == "tool_error"
    assert "did not answer within 0.5s" in step.error["message"]
    assert step.attempt == 2  # a transport failure is retryable
    assert mcp.calls == [{"tool": "hang"}, {"tool": "hang"}]


def test_a_denied_mcp_tool_is_never_called(cast, mcp, demo):
    make_policy(cast.project, cast.owner, "tool_denylist", {"tools": ["demo__*"]})
    run = tool_run(cast, "demo__add", {"a": 1, "b": 2})
    assert run.status == "failed"
    assert "demo__*" in json.dumps(run.steps.get(node_id="act").error)
    assert mcp.calls == []
    assert events_of(run, "tool.call") == []


def test_secrets_in_headers_reach_the_server_and_never_the_record(cast, mcp):
    mcp.calls.clear()
    token = "mcp-tok-5e1c7a0b"
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="mcp_token", value=token
    )
    mcp_services.mcp_server_create(
        actor=cast.owner,
        project=cast.project,
        name="auth",
        url=mcp.url,
        headers={"X-Token": "{{ secrets.mcp_token }}"},
    )
    run = tool_run(cast, "auth__echo_header", {"name": "x-token"})
    assert run.status == "succeeded", run.error
    assert mcp.calls[-1] == {"tool": "echo_header", "name": "x-token", "value": token}
    assert run.output == {"result": {"result": "***"}}
    assert token not in json.dumps([e.payload for e in events_of(run)])


def test_a_tool_step_waits_for_an_approval_then_calls_the_tool(cast, mcp, demo):
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["demo__add"]})
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [{"id": "act", "type": "tool", "tool": "demo__add", "args": {"a": 4, "b": 4}}],
    )
    run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
    run = wait_for_run(run.pk, ("waiting_approval",))
    assert mcp.calls == []
    services.step_decide(run=run, node_id="act", actor=cast.developer, approve=True)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="act").output == {"sum": 8}
    assert mcp.calls == [{"tool": "add", "a": 4, "b": 4}]


def test_an_agent_calls_the_mcp_tools_it_attached(cast, fake_llm, mcp, demo):
    make_agent(cast, fake_llm, "openai", mcp_tools=[{"server": "demo", "tools": ["add"]}])
    call = {"id": "call_m", "name": "demo__add", "arguments": {"a": 20, "b": 22}}
    fake_llm.enqueue("openai", {"tool_calls": [call], "input_tokens": 10, "output_tokens": 5})
    fake_llm.enqueue("openai", {"content": "42.", "input_tokens": 20, "output_tokens": 2})
    run = services.run_create(
        workflow=agent_workflow(cast), input={"topic": "sums"}, actor=cast.owner
    )
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    first, second = fake_llm.requests_for("openai")
    offered = {t["function"]["name"]: t["function"] for t in first.body["tools"]}
    assert list(offered) == ["demo__add"]  # only the tool it named
    assert offered["demo__add"]["parameters"]["required"] == ["a", "b"]
    assert json.loads(tool_results("openai", second)["call_m"]) == {"sum": 42}
    assert mcp.calls == [{"tool": "add", "a": 20, "b": 22}]
    (event,) = events_of(run, "tool.call")
    assert event.payload["mcp_server"] == "demo" and event.payload["iteration"] == 1


def test_an_agent_call_held_for_approval_pauses_and_resumes(cast, fake_llm, mcp, demo):
    make_agent(cast, fake_llm, "openai", mcp_tools=[{"server": "demo", "tools": None}])
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["demo__add"]})
    call = {"id": "call_h", "name": "demo__add", "arguments": {"a": 1, "b": 2}}
    fake_llm.enqueue("openai", {"tool_calls": [call], "input_tokens": 10, "output_tokens": 5})
    fake_llm.enqueue("openai", {"content": "3.", "input_tokens": 20, "output_tokens": 2})
    run = services.run_create(
        workflow=agent_workflow(cast), input={"topic": "sums"}, actor=cast.owner
    )
    run = wait_for_run(run.pk, ("waiting_approval",))
    step = run.steps.get(node_id="think")
    assert step.state["pending"]["tool"] == "demo__add"
    assert mcp.calls == []
    offered = {t["function"]["name"] for t in fake_llm.requests_for("openai")[0].body["tools"]}
    assert offered == {"demo__add", "demo__echo_header", "demo__fail", "demo__hang"}
    services.step_decide(run=run, node_id="think", actor=cast.developer, approve=True)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": {"text": "3."}}
    assert mcp.calls == [{"tool": "add", "a": 1, "b": 2}]
    assert len(fake_llm.requests_for("openai")) == 2  # the model was not asked again


def test_pii_in_an_mcp_tool_output_is_redacted_before_it_is_recorded(cast, mcp):
    email = "bob.mcp@example.com"
    mcp_services.mcp_server_create(
        actor=cast.owner,
        project=cast.project,
        name="mail",
        url=mcp.url,
        headers={"X-Mail": email},
    )
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["tool_output"]})
    run = tool_run(cast, "mail__echo_header", {"name": "x-mail"})
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="act").output == {"result": "[REDACTED_EMAIL]"}
    (call,) = events_of(run, "tool.call")
    assert email not in json.dumps(call.payload)
    assert call.payload["mcp_server"] == "mail"


def test_a_run_keeps_the_snapshot_it_started_with(cast, mcp, demo):
    """Rediscovering while a run waits does not change what it calls: it names snapshot 1."""
    from tools.models import McpToolset

    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["demo__add"]})
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [{"id": "act", "type": "tool", "tool": "demo__add", "args": {"a": 1, "b": 1}}],
    )
    run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
    run = wait_for_run(run.pk, ("waiting_approval",))
    McpToolset.objects.filter(server=demo).update(digest="older")  # the tools "changed"
    assert mcp_services.mcp_server_discover(server=demo, actor=cast.owner).tools_version == 2
    services.step_decide(run=run, node_id="act", actor=cast.developer, approve=True)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    (event,) = events_of(run, "tool.call")
    assert event.payload["mcp_tools_version"] == 1
    assert mcp_services.mcp_tool_named(cast.project.pk, "demo__add").tools_version == 2
    pinned = mcp_services.mcp_tool_named(cast.project.pk, "demo__add", as_of=run.created_at)
    assert pinned.tools_version == 1


def test_a_server_that_went_away_is_a_retryable_transport_error(cast, mcp, demo):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/mcp"
    mcp_services.mcp_server_update(server=demo, actor=cast.owner, url=closed)
    run = tool_run(cast, "demo__add", {"a": 1, "b": 1}, retry=FAST_RETRY)
    assert run.status == "failed"
    step = run.steps.get(node_id="act")
    assert step.error["type"] == "tool_error" and step.attempt == 2
    assert "MCP server 'demo' could not be reached" in step.error["message"]
    calls = events_of(run, "tool.call")
    assert len(calls) == 2 and all(c.payload["mcp_tool"] == "add" for c in calls)
    assert mcp.calls == []
