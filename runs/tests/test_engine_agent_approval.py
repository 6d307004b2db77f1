"""A tool call the model makes inside an agent step, held by an enforced `tool_requires_approval`
policy: the step pauses with its loop saved and releases the worker; approving resumes the
loop where it stopped (the model is not asked again, nothing is charged twice), rejecting fails
the step. Real worker, real `openai` / `anthropic` SDKs against the fake provider server, and a
real HTTP tool whose calls are counted."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from policies import services as policy_services
from policies.models import PolicyDecision
from policies.tests.factories import make_policy
from projects import services as project_services
from runs import services
from runs.tests.conftest import builtin_tool, events_of, http_tool
from runs.tests.test_engine_agents import (
    KEY,
    agent_workflow,
    make_agent,
    priced,  # noqa: F401 (a fixture)
    recorded,
    tool_results,
)
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")

TOKEN = "tok-7f3a91c2-in-the-prompt"


@pytest.fixture
def send(cast, tool_server):
    """An HTTP tool whose every call reaches the tool server (`tool_server.calls("/send")`)."""
    url = tool_server.route("/send", lambda hit: (200, {"sent_to": hit.body["to"]}))
    return http_tool(cast.project, cast.owner, "send", url, properties={"to": {"type": "string"}})


def held_run(cast, **node):
    run = services.run_create(
        workflow=agent_workflow(cast, **node), input={"topic": "otters"}, actor=cast.owner
    )
    return wait_for_run(run.pk, ("waiting_approval",))


def decide(cast, run, verb, comment=""):
    response = cast.client("developer").post(
        f"/api/v1/runs/{run.pk}/steps/think/{verb}", {"comment": comment}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def approval_decisions(run):
    return list(PolicyDecision.objects.filter(run=run, outcome="require_approval").order_by("id"))


@pytest.mark.usefixtures("priced")
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_held_call_pauses_the_step_and_approving_resumes_the_loop(
    cast, fake_llm, tool_server, send, kind
):
    calc = builtin_tool(cast.project, cast.owner, "calc", "calculator")
    make_agent(cast, fake_llm, kind, tools=[send, calc])
    project_services.secret_create(project=cast.project, actor=cast.owner, name="tok", value=TOKEN)
    policy = make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["send"]})
    calls = [
        {"id": "call_s", "name": "send", "arguments": {"to": "bob"}},
        {"id": "call_c", "name": "calc", "arguments": {"expression": "6*7"}},
    ]
    fake_llm.enqueue(kind, {"tool_calls": calls, "input_tokens": 100, "output_tokens": 10})
    fake_llm.enqueue(kind, {"content": "Sent to bob.", "input_tokens": 200, "output_tokens": 8})

    run = held_run(cast, prompt="Work on {{ input.topic }} ({{ secrets.tok }})")
    step = run.steps.get(node_id="think")
    assert step.status == "waiting_approval" and step.attempt == 1
    # Nothing ran: neither the held call nor the one after it; the model was asked once.
    assert tool_server.calls("/send") == [] and events_of(run, "tool.call") == []
    assert len(fake_llm.requests_for(kind)) == 1
    assert (run.input_tokens, run.output_tokens) == (100, 10)
    (requested,) = events_of(run, "approval.requested")
    assert requested.node_id == "think"
    assert requested.payload["tool"] == "send"
    assert requested.payload["arguments"] == {"to": "bob"}
    assert requested.payload["iteration"] == 1 and requested.payload["policy"] is True
    assert (
        "needs an approval" in requested.payload["message"]
        and policy.name in (requested.payload["message"])
    )
    statuses = [e.payload["status"] for e in events_of(run, "step.status", node_id="think")]
    assert statuses[-2:] == ["running", "waiting_approval"]
    (decision,) = approval_decisions(run)
    assert decision.policy_id == policy.pk and decision.node_id == "think"
    # The saved loop: the conversation, the iteration's calls (held one first), secrets out.
    state = step.state
    assert state["iteration"] == 1 and state["approved"] == []
    assert state["pending"]["tool"] == "send" and state["pending"]["key"] == "1:call_s"
    assert [c["id"] for c in state["calls"]] == ["call_s", "call_c"]
    assert state["messages"][-1]["role"] == "assistant"
    assert TOKEN not in json.dumps(state) and "***" in json.dumps(state["messages"])
    assert TOKEN not in recorded(run) and KEY not in json.dumps(state)
    # The operator console shows what is asked, and the saved loop read-only.
    operator = Client()
    operator.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = operator.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert 'class="console-approval" data-node="think"' in page
    assert "Call: send {&quot;to&quot;: &quot;bob&quot;}" in page
    page = operator.get(f"/admin/runs/runstep/{step.pk}/change/").content.decode()
    assert "Saved agent loop" in page and "call_c" in page

    body = decide(cast, run, "approve", "go ahead")
    assert body["status"] == "queued" and body["attempt"] == 2
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": {"text": "Sent to bob."}}
    step = run.steps.get(node_id="think")
    assert step.status == "succeeded" and step.state is None and step.attempt == 2

    # The approved call ran once, with the key of its iteration; then the rest of the iteration.
    (hit,) = tool_server.calls("/send")
    assert hit.body == {"to": "bob"}
    assert hit.headers["x-idempotency-key"] == f"{run.pk}:think:1:call_s"
    assert [(e.payload["tool"], e.payload["iteration"]) for e in events_of(run, "tool.call")] == [
        ("send", 1),
        ("calc", 1),
    ]
    # The model was not asked again for the answered iteration: one more request, which carries
    # both results and the prompt rendered afresh (the secret is redacted only in the saved copy).
    requests = fake_llm.requests_for(kind)
    assert len(requests) == 2
    results = tool_results(kind, requests[1])
    assert json.loads(results["call_s"]) == {"sent_to": "bob"}
    assert json.loads(results["call_c"]) == {"result": 42}
    assert TOKEN in json.dumps(requests[1].body["messages"])
    # Charged once per model call.
    assert [e.payload["iteration"] for e in events_of(run, "llm.call")] == [1, 2]
    assert (run.input_tokens, run.output_tokens) == (300, 18)
    assert (step.input_tokens, step.output_tokens) == (300, 18)
    assert run.cost == step.cost == Decimal("0.336")
    assert len(approval_decisions(run)) == 1
    (decided,) = events_of(run, "approval.decided")
    assert decided.payload["approved"] is True and decided.payload["comment"] == "go ahead"
    assert TOKEN not in recorded(run) and KEY not in recorded(run)


def test_rejecting_a_held_call_fails_the_step(cast, fake_llm, tool_server, send):
    make_agent(cast, fake_llm, "openai", tools=[send])
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["se*"]})
    fake_llm.enqueue("openai", {"tool_calls": [{"name": "send", "arguments": {"to": "eve"}}]})
    run = held_run(cast)

    # Through the operator console (the API's reject goes through the same service).
    operator = Client()
    operator.force_login(UserFactory(is_staff=True, is_superuser=True))
    operator.post(
        f"/admin/runs/run/{run.pk}/decide/",
        {"node_id": "think", "decision": "reject", "comment": "not to eve"},
    )
    run = wait_for_run(run.pk)
    assert run.status == "failed" and run.error["step"] == "think"
    step = run.steps.get(node_id="think")
    assert step.status == "failed" and step.state is None
    assert step.error["type"] == "rejected" and "not to eve" in step.error["message"]
    assert tool_server.calls("/send") == [] and events_of(run, "tool.call") == []
    assert len(fake_llm.requests_for("openai")) == 1
    (decided,) = events_of(run, "approval.decided")
    assert decided.payload["approved"] is False


def test_approval_is_per_call_not_per_step(cast, fake_llm, tool_server, send):
    """The same tool asked for again in a later iteration waits for its own approval."""
    make_agent(cast, fake_llm, "openai", tools=[send])
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["send"]})
    for to in ("ann", "bea"):
        fake_llm.enqueue(
            "openai", {"tool_calls": [{"id": f"to_{to}", "name": "send", "arguments": {"to": to}}]}
        )
    fake_llm.enqueue("openai", {"content": "Both sent."})

    run = held_run(cast)
    decide(cast, run, "approve")
    run = wait_for_run(run.pk, ("waiting_approval",))  # the approval left it running
    step = run.steps.get(node_id="think")
    assert step.attempt == 2 and step.state["iteration"] == 2
    assert step.state["pending"]["arguments"] == {"to": "bea"}
    assert step.state["approved"] == ["1:to_ann"]
    assert [hit.body["to"] for hit in tool_server.calls("/send")] == ["ann"]
    assert len(fake_llm.requests_for("openai")) == 2
    requested = events_of(run, "approval.requested")
    assert [(e.payload["iteration"], e.payload["arguments"]) for e in requested] == [
        (1, {"to": "ann"}),
        (2, {"to": "bea"}),
    ]

    decide(cast, run, "approve")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": {"text": "Both sent."}}
    assert [
        (hit.body["to"], hit.headers["x-idempotency-key"]) for hit in tool_server.calls("/send")
    ] == [("ann", f"{run.pk}:think:1:to_ann"), ("bea", f"{run.pk}:think:2:to_bea")]
    assert len(fake_llm.requests_for("openai")) == 3
    assert len(approval_decisions(run)) == 2
    assert run.steps.get(node_id="think").attempt == 3


def test_audit_mode_records_the_decision_and_the_call_goes_ahead(cast, fake_llm, tool_server, send):
    make_agent(cast, fake_llm, "openai", tools=[send])
    policy = make_policy(
        cast.project, cast.owner, "tool_requires_approval", {"tools": ["send"]}, mode="audit"
    )
    fake_llm.enqueue("openai", {"tool_calls": [{"name": "send", "arguments": {"to": "cy"}}]})
    fake_llm.enqueue("openai", {"content": "Sent."})
    run = services.run_create(
        workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
    )
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert [hit.body for hit in tool_server.calls("/send")] == [{"to": "cy"}]
    assert events_of(run, "approval.requested") == []
    (decision,) = PolicyDecision.objects.filter(run=run)
    assert (decision.policy_id, decision.outcome) == (policy.pk, "audit_require_approval")
    step = run.steps.get(node_id="think")
    assert (step.attempt, step.state) == (1, None)


def test_a_held_call_is_reported_to_webhooks_with_the_call(cast, fake_llm, tool_server, send):
    from projects import webhooks
    from projects.tests.receiver import Receiver

    make_agent(cast, fake_llm, "openai", tools=[send])
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["send"]})
    fake_llm.enqueue("openai", {"tool_calls": [{"name": "send", "arguments": {"to": "dan"}}]})
    with Receiver() as receiver:
        webhooks.endpoint_create(
            actor=cast.admin,
            project=cast.project,
            url=receiver.url,
            events=["approval.requested"],
        )
        held_run(cast)
        wait_until(lambda: receiver.requests, what="the approval.requested delivery")
    (request,) = receiver.requests
    data = request.json()["data"]
    assert data["step"] == "think" and "needs an approval" in data["message"]
    assert data["call"] == {"tool": "send", "arguments": {"to": "dan"}, "iteration": 1}


def test_content_rules_apply_to_a_held_call_before_anyone_sees_it(
    cast, fake_llm, tool_server, send
):
    """The person approves the arguments the tool will get: redacted as a PII rule says, in
    the request, the saved loop and the call itself. Arguments a rule refuses fail the step at
    once instead of waiting for an approval."""
    make_agent(cast, fake_llm, "openai", tools=[send])
    make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["send"]})
    pii = make_policy(cast.project, cast.owner, "pii", {"apply_to": ["tool_arguments"]})
    fake_llm.enqueue(
        "openai", {"tool_calls": [{"name": "send", "arguments": {"to": "jane@example.com"}}]}
    )
    fake_llm.enqueue("openai", {"content": "Sent."})
    run = held_run(cast)
    (requested,) = events_of(run, "approval.requested")
    assert "jane@example.com" not in json.dumps(requested.payload)
    assert "jane@example.com" not in json.dumps(run.steps.get(node_id="think").state)
    assert PolicyDecision.objects.filter(run=run, policy=pii, outcome="redact").count() == 1

    decide(cast, run, "approve")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    (hit,) = tool_server.calls("/send")
    assert hit.body["to"] == requested.payload["arguments"]["to"] != "jane@example.com"
    # Recorded once: the approved call is made with the arguments as they were redacted.
    assert PolicyDecision.objects.filter(run=run, policy=pii, outcome="redact").count() == 1
    assert len(approval_decisions(run)) == 1

    # A rule that refuses the arguments: no pause, the step fails.
    policy_services.policy_update(
        policy=pii, actor=cast.owner, rule={"apply_to": ["tool_arguments"], "action": "deny"}
    )
    fake_llm.enqueue("openai", {"tool_calls": [{"name": "send", "arguments": {"to": "a@b.co"}}]})
    run = services.run_create(
        workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
    )
    run = wait_for_run(run.pk)
    assert run.status == "failed"
    assert run.steps.get(node_id="think").error["type"] == "policy_denied"
    assert events_of(run, "approval.requested") == []
    assert len(tool_server.calls("/send")) == 1  # only the first run's call
