"""Agent steps on a real Celery worker: the tool-calling loop through the real `openai` and
`anthropic` SDKs against the fake provider server on 127.0.0.1, usage and cost accounting,
invalid tool calls, iteration limits, JSON output, provider errors and retries."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from agents import services as agent_services
from agents.models import ModelPrice
from projects import services as project_services
from runs import services
from runs.models import Run
from runs.tests.conftest import builtin_tool, events_of, http_tool
from runs.tests.factories import make_workflow
from sparkops.testing.engine import wait_for_run
from workflows import services as workflow_services

pytestmark = pytest.mark.usefixtures("engine")

KEY = "sk-fake-4c1d9e2b-never-recorded"
MODELS = {"openai": "gpt-test-1", "anthropic": "claude-test-1"}
FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.05, "max_backoff_seconds": 0.1}


@pytest.fixture
def priced():
    """Prices per million tokens, so every call of the test models costs something."""
    for provider, model in MODELS.items():
        ModelPrice.objects.create(
            provider=provider,
            model_pattern=model.rsplit("-", 1)[0] + "-*",
            input_per_million=Decimal("1000"),
            output_per_million=Decimal("2000"),
        )


def make_agent(cast, fake_llm, provider, *, tools=(), **fields):
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="llm_key", value=KEY
    )
    base_url = fake_llm.openai_base_url if provider == "openai" else fake_llm.anthropic_base_url
    fields.setdefault("model", MODELS.get(provider, "sim-1"))
    if provider in MODELS:
        fields.update(base_url=base_url, credentials_secret="llm_key")
    return agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Helper",
        slug="helper",
        provider=provider,
        system_prompt="You help.",
        tools=[tool.pk for tool in tools],
        **fields,
    )


def agent_workflow(cast, **node):
    return make_workflow(
        cast.project,
        cast.owner,
        [
            {
                "id": "think",
                "type": "agent",
                "agent": "helper",
                "prompt": "Work on {{ input.topic }}",
                **node,
            }
        ],
        output={"answer": "{{ steps.think.output }}"},
    )


def run_of(cast, workflow, input=None):
    run = services.run_create(
        workflow=workflow, input=input or {"topic": "otters"}, actor=cast.owner
    )
    return wait_for_run(run.pk)


def tool_results(kind, request):
    """{tool call id: result text} fed back to the model in one recorded request."""
    results = {}
    for message in request.body["messages"]:
        if kind == "openai" and message["role"] == "tool":
            results[message["tool_call_id"]] = message["content"]
        if kind == "anthropic" and isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    results[block["tool_use_id"]] = block["content"]
    return results


def recorded(run):
    from runs.models import Run, RunStep

    return json.dumps(
        [
            list(RunStep.objects.filter(run=run).values("input", "output", "error")),
            [e.payload for e in events_of(run)],
            Run.objects.filter(pk=run.pk).values("output", "error").get(),
        ],
        default=str,
    )


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_agent_loop_with_two_tool_calls(cast, fake_llm, tool_server, priced, kind):
    calc = builtin_tool(cast.project, cast.owner, "calc", "calculator")
    lookup = http_tool(
        cast.project,
        cast.owner,
        "lookup",
        tool_server.url + "/lookup",
        properties={"q": {"type": "string"}},
    )
    make_agent(cast, fake_llm, kind, tools=[calc, lookup])
    fake_llm.enqueue(
        kind,
        {
            "tool_calls": [{"id": "call_a", "name": "calc", "arguments": {"expression": "6*7"}}],
            "input_tokens": 100,
            "output_tokens": 10,
        },
    )
    fake_llm.enqueue(
        kind,
        {
            "tool_calls": [{"id": "call_b", "name": "lookup", "arguments": {"q": "answer"}}],
            "input_tokens": 150,
            "output_tokens": 12,
        },
    )
    fake_llm.enqueue(
        kind, {"content": "The answer is 42.", "input_tokens": 200, "output_tokens": 8}
    )
    run = run_of(cast, agent_workflow(cast))
    assert run.status == "succeeded", run.error
    step = run.steps.get(node_id="think")
    assert step.output == {"text": "The answer is 42."}
    assert run.output == {"answer": {"text": "The answer is 42."}}
    assert step.input == {"prompt": "Work on otters", "system_prompt": "You help."}

    requests = fake_llm.requests_for(kind)
    assert len(requests) == 3
    assert KEY in json.dumps(requests[0].headers)  # the key reached the provider
    # what the model saw: the prompt, then each tool's result fed back
    assert "Work on otters" in json.dumps(requests[0].body["messages"])
    assert {
        t["name"] if kind == "anthropic" else t["function"]["name"]
        for t in requests[0].body["tools"]
    } == {"calc", "lookup"}
    assert json.loads(tool_results(kind, requests[1])["call_a"]) == {"result": 42}
    looked_up = json.loads(tool_results(kind, requests[2])["call_b"])
    assert looked_up["body"] == {"q": "answer"}
    hit = tool_server.calls("/lookup")[0]
    assert hit.headers["x-idempotency-key"] == f"{run.pk}:think:2:call_b"

    llm_calls = events_of(run, "llm.call")
    assert [e.payload["iteration"] for e in llm_calls] == [1, 2, 3]
    assert [e.payload["tool_calls"] for e in llm_calls] == [["calc"], ["lookup"], []]
    assert [(e.payload["input_tokens"], e.payload["output_tokens"]) for e in llm_calls] == [
        (100, 10),
        (150, 12),
        (200, 8),
    ]
    assert [Decimal(e.payload["cost"]) for e in llm_calls] == [
        Decimal("0.12"),
        Decimal("0.174"),
        Decimal("0.216"),
    ]
    assert all(e.payload["provider"] == kind and not e.payload["price_unknown"] for e in llm_calls)
    assert all(e.payload["latency_ms"] >= 0 for e in llm_calls)
    tool_calls = events_of(run, "tool.call")
    assert [(e.payload["tool"], e.payload["iteration"], e.payload["ok"]) for e in tool_calls] == [
        ("calc", 1, True),
        ("lookup", 2, True),
    ]
    # totals: step and run equal the sum of the charged calls
    assert run.input_tokens == step.input_tokens == 450
    assert run.output_tokens == step.output_tokens == 30
    assert run.cost == step.cost == sum(Decimal(e.payload["cost"]) for e in llm_calls)
    assert run.cost == Decimal("0.51")
    assert KEY not in recorded(run)


def test_invalid_tool_calls_are_reported_back_to_the_model(cast, fake_llm):
    calc = builtin_tool(cast.project, cast.owner, "calc", "calculator")
    make_agent(cast, fake_llm, "openai", tools=[calc])
    fake_llm.enqueue(
        "openai",
        {
            "tool_calls": [
                {"id": "bad_schema", "name": "calc", "arguments": {"expression": 5, "x": 1}},
                {"id": "bad_json", "name": "calc", "arguments": "{not json"},
                {"id": "unknown", "name": "rm_rf", "arguments": {}},
            ]
        },
    )
    fake_llm.enqueue("openai", {"content": "Sorry, let me stop here."})
    run = run_of(cast, agent_workflow(cast))
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="think").output == {"text": "Sorry, let me stop here."}
    results = tool_results("openai", fake_llm.requests_for("openai")[1])
    schema = json.loads(results["bad_schema"])
    assert schema["error"] == "Invalid tool arguments."
    assert set(schema["details"]) == {"arguments.expression", "arguments.x"}
    assert "not a JSON object" in json.loads(results["bad_json"])["error"]
    assert "Unknown tool 'rm_rf'" in json.loads(results["unknown"])["error"]
    (event,) = events_of(run, "tool.call")
    assert event.payload["ok"] is False
    assert "arguments.expression" in event.payload["errors"]


def test_max_iterations_fails_the_step(cast, fake_llm):
    calc = builtin_tool(cast.project, cast.owner, "calc", "calculator")
    make_agent(cast, fake_llm, "openai", tools=[calc], max_iterations=2)
    for _ in range(3):
        fake_llm.enqueue(
            "openai", {"tool_calls": [{"name": "calc", "arguments": {"expression": "1+1"}}]}
        )
    run = run_of(cast, agent_workflow(cast, retry=FAST_RETRY))
    assert run.status == "failed"
    step = run.steps.get(node_id="think")
    assert step.error["type"] == "max_iterations"
    assert step.error["retryable"] is False
    assert step.attempt == 1
    assert "2 iterations" in step.error["message"]
    assert len(fake_llm.requests_for("openai")) == 2
    assert len(events_of(run, "llm.call")) == 2
    assert len(events_of(run, "tool.call")) == 2
    assert run.error["step"] == "think"


def test_simulated_provider_scripted_loop(cast):
    calc = builtin_tool(cast.project, cast.owner, "calc", "calculator")
    agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Sim",
        slug="helper",
        provider="simulated",
        model="sim-1",
        tools=[calc.pk],
        settings={
            "mode": "script",
            "turns": [
                {"tool_calls": [{"name": "calc", "arguments": {"expression": "2+2"}}]},
                {"content": "Result: {last_tool_result}"},
            ],
            "input_tokens": 7,
            "output_tokens": 3,
        },
    )
    run = run_of(cast, agent_workflow(cast))
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="think").output == {"text": 'Result: {"result": 4}'}
    llm_calls = events_of(run, "llm.call")
    assert len(llm_calls) == 2
    assert all(e.payload["provider"] == "simulated" for e in llm_calls)
    assert all(e.payload["price_unknown"] for e in llm_calls)
    assert (run.input_tokens, run.output_tokens, run.cost) == (14, 6, 0)
    assert [e.payload["output_preview"] for e in events_of(run, "tool.call")] == ['{"result": 4}']


def test_response_format_gives_a_parsed_object(cast, fake_llm):
    schema = {
        "type": "object",
        "properties": {"score": {"type": "number"}, "label": {"type": "string"}},
        "required": ["score", "label"],
    }
    make_agent(cast, fake_llm, "openai", response_format=schema)
    fake_llm.enqueue("openai", {"content": '{"score": 0.9, "label": "good"}'})
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            {"id": "think", "type": "agent", "agent": "helper", "prompt": "Rate it"},
            {
                "id": "gate",
                "type": "transform",
                "output": "{{ steps.think.output.label }}",
                "depends_on": ["think"],
                "when": "{{ steps.think.output.score > 0.5 }}",
            },
        ],
    )
    run = run_of(cast, wf)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="think").output == {"score": 0.9, "label": "good"}
    assert run.steps.get(node_id="gate").output == "good"
    sent = fake_llm.requests_for("openai")[0].body["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"] == schema


def test_provider_401_fails_at_once_with_a_clear_error(cast, fake_llm):
    make_agent(cast, fake_llm, "openai")
    fake_llm.enqueue("openai", {"status": 401, "message": f"Incorrect API key provided: {KEY}"})
    run = run_of(cast, agent_workflow(cast, retry=FAST_RETRY))
    assert run.status == "failed"
    step = run.steps.get(node_id="think")
    assert step.status == "failed"
    assert (step.attempt, step.failures) == (1, 1)
    assert step.error["type"] == "provider_auth_error"
    assert step.error["retryable"] is False
    assert "rejected the credentials (HTTP 401)" in step.error["message"]
    assert len(fake_llm.requests_for("openai")) == 1
    assert events_of(run, "llm.call") == []
    assert KEY not in recorded(run)


def test_provider_429_is_retried_then_succeeds(cast, fake_llm, priced):
    make_agent(cast, fake_llm, "anthropic")
    fake_llm.enqueue("anthropic", {"status": 429})
    fake_llm.enqueue("anthropic", {"content": "done", "input_tokens": 10, "output_tokens": 5})
    run = run_of(cast, agent_workflow(cast, retry=FAST_RETRY))
    assert run.status == "succeeded", run.error
    step = run.steps.get(node_id="think")
    assert (step.attempt, step.failures) == (2, 1)
    assert step.output == {"text": "done"}
    (retry,) = [e for e in events_of(run, "step.status", "think") if e.payload.get("retry")]
    assert retry.payload["error"]["type"] == "provider_rate_limited"
    assert len(fake_llm.requests_for("anthropic")) == 2
    # only the answered call is charged
    assert len(events_of(run, "llm.call")) == 1
    assert (run.input_tokens, run.output_tokens) == (10, 5)
    assert run.cost == Decimal("0.02")


# Backoff far shorter than the Retry-After the fake answers, so the wait shows which one won.
QUICK_BACKOFF = {"max_attempts": 1, "backoff_seconds": 0.05, "max_backoff_seconds": 5}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_rate_limit_is_retried_by_default_after_its_retry_after(cast, fake_llm, priced, kind):
    make_agent(cast, fake_llm, kind)
    fake_llm.enqueue(kind, {"status": 429, "headers": {"Retry-After": "1"}})
    fake_llm.enqueue(kind, {"content": "done", "input_tokens": 10, "output_tokens": 5})
    # No `retry` block on the node, and a workflow policy of one attempt.
    workflow = agent_workflow(cast)
    workflow_services.workflow_update(
        workflow=workflow, actor=cast.owner, retry_policy=QUICK_BACKOFF
    )
    run = run_of(cast, workflow)
    assert run.status == "succeeded", run.error
    step = run.steps.get(node_id="think")
    assert (step.attempt, step.failures, step.output) == (2, 1, {"text": "done"})
    (retry,) = [e for e in events_of(run, "step.status", "think") if e.payload.get("retry")]
    assert retry.payload["error"]["type"] == "provider_rate_limited"
    assert retry.payload["error"]["retry_after"] == 1.0
    assert retry.payload["delay_seconds"] == 1.0
    assert retry.payload["max_attempts"] == 4  # SPARKOPS_PROVIDER_RETRY_ATTEMPTS
    first, second = fake_llm.requests_for(kind)
    assert second.received_at - first.received_at >= 1.0


def test_server_errors_are_retried_by_default_until_the_attempts_run_out(cast, fake_llm):
    make_agent(cast, fake_llm, "openai")
    for _ in range(4):
        fake_llm.enqueue("openai", {"status": 503, "headers": {"retry-after-ms": "50"}})
    workflow = agent_workflow(cast)
    workflow_services.workflow_update(
        workflow=workflow, actor=cast.owner, retry_policy=QUICK_BACKOFF
    )
    run = run_of(cast, workflow)
    assert run.status == "failed"
    step = run.steps.get(node_id="think")
    assert (step.attempt, step.failures) == (4, 4)
    assert step.error["type"] == "provider_error" and step.error["provider_status"] == 503
    assert len(fake_llm.requests_for("openai")) == 4


def test_a_node_retry_block_is_taken_as_written(cast, fake_llm):
    make_agent(cast, fake_llm, "openai")
    fake_llm.enqueue("openai", {"status": 429, "headers": {"Retry-After": "0"}})
    run = run_of(cast, agent_workflow(cast, retry={"max_attempts": 1}))
    assert run.status == "failed"
    assert run.steps.get(node_id="think").error["type"] == "provider_rate_limited"
    assert len(fake_llm.requests_for("openai")) == 1


def test_agent_step_timeout_bounds_every_model_call(cast, fake_llm):
    calc = builtin_tool(cast.project, cast.owner, "calc", "calculator")
    make_agent(cast, fake_llm, "openai", tools=[calc])
    fake_llm.enqueue(
        "openai",
        {"tool_calls": [{"name": "calc", "arguments": {"expression": "1"}}], "delay": 1.0},
    )
    fake_llm.enqueue("openai", {"content": "too late", "delay": 10})
    run = run_of(cast, agent_workflow(cast, timeout_seconds=2, retry={"max_attempts": 1}))
    assert run.status == "failed"
    step = run.steps.get(node_id="think")
    assert step.error["type"] == "timeout", step.error
    # the second call had only what was left of the step's 2 s, not a fresh 2 s
    # a fresh 2 s for the second call would end after 4 s
    assert (step.finished_at - step.started_at).total_seconds() < 3.9


def test_a_map_of_agent_items_records_tokens_and_cost_per_item(cast, fake_llm, priced):
    make_agent(cast, fake_llm, "openai")
    for n in (1, 2, 3):
        fake_llm.enqueue(
            "openai", {"content": f"summary {n}", "input_tokens": 10 * n, "output_tokens": n}
        )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            {
                "id": "each",
                "type": "map",
                "items": "{{ input.docs }}",
                "node": {"type": "agent", "agent": "helper", "prompt": "Summarise {{ item }}"},
                "max_concurrency": 1,
            }
        ],
        output="{{ steps.each.output | map(attribute='text') | list }}",
    )
    run = run_of(cast, wf, {"docs": ["a", "b", "c"]})
    assert run.status == "succeeded", run.error
    assert run.output == ["summary 1", "summary 2", "summary 3"]
    prompts = [r.body["messages"][-1]["content"] for r in fake_llm.requests_for("openai")]
    assert prompts == ["Summarise a", "Summarise b", "Summarise c"]
    items = run.steps.filter(item_index__isnull=False).order_by("item_index")
    assert [(s.node_id, s.input_tokens, s.output_tokens) for s in items] == [
        ("each[0]", 10, 1),
        ("each[1]", 20, 2),
        ("each[2]", 30, 3),
    ]
    assert [s.cost for s in items] == [Decimal("0.012"), Decimal("0.024"), Decimal("0.036")]
    assert (run.input_tokens, run.output_tokens, run.cost) == (60, 6, Decimal("0.072"))
    assert [e.node_id for e in events_of(run, "llm.call")] == ["each[0]", "each[1]", "each[2]"]


def test_a_child_runs_tokens_and_cost_roll_up_to_the_parent_step_and_run(cast, fake_llm, priced):
    make_agent(cast, fake_llm, "openai")
    fake_llm.enqueue("openai", {"content": "researched", "input_tokens": 100, "output_tokens": 10})
    agent_workflow(cast)  # slug "wf": one agent step
    parent = make_workflow(
        cast.project,
        cast.owner,
        [
            {
                "id": "sub",
                "type": "workflow",
                "workflow": "wf",
                "input": {"topic": "{{ input.topic }}"},
            }
        ],
        name="parent",
        output="{{ steps.sub.output.answer.text }}",
    )
    run = run_of(cast, parent, {"topic": "otters"})
    assert run.status == "succeeded", run.error
    assert run.output == "researched"
    child = Run.objects.get(parent_step__run=run)
    assert (child.input_tokens, child.output_tokens, child.cost) == (100, 10, Decimal("0.12"))
    step = run.steps.get(node_id="sub")
    assert (step.input_tokens, step.output_tokens, step.cost) == (100, 10, Decimal("0.12"))
    assert (run.input_tokens, run.output_tokens, run.cost) == (100, 10, Decimal("0.12"))
