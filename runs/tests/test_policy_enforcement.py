"""Every policy kind, in enforce and in audit mode, through the real engine (a Celery worker,
the simulated provider: no network). Enforced denials fail the step naming the policy; audit
mode records the same decision and changes nothing; redaction removes the data from what is
stored and from what goes on to the model or the tool."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents import services as agent_services
from policies.models import PolicyDecision
from policies.tests.factories import agent_workflow, looping_agent, make_agent, make_policy
from runs import services
from runs.models import Run, RunEvent, RunStep
from runs.tests.conftest import builtin_tool
from runs.tests.factories import make_workflow
from sparkops.testing.engine import wait_for_run

pytestmark = pytest.mark.usefixtures("engine")

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"


def tool_workflow(cast: Any, tool: str, args: Any) -> Any:
    return make_workflow(
        cast.project, cast.owner, [{"id": "act", "type": "tool", "tool": tool, "args": args}]
    )


def run_of(cast: Any, workflow: Any, **input: Any) -> Run:
    run = services.run_create(
        workflow=workflow, input=input or {"topic": "otters"}, actor=cast.owner
    )
    return wait_for_run(run.pk)


def step_of(run: Run, node_id: str = "think") -> RunStep:
    return RunStep.objects.get(run=run, node_id=node_id)


def decisions_of(run: Run) -> list[PolicyDecision]:
    return list(PolicyDecision.objects.filter(run=run).order_by("id"))


def policy_events(run: Run) -> list[dict[str, Any]]:
    return [
        e.payload
        for e in RunEvent.objects.filter(run=run, type=RunEvent.Type.POLICY).order_by("seq")
    ]


def stored(run: Run) -> str:
    """Everything recorded about a run: step inputs, outputs and errors, events, run output."""
    return json.dumps(
        [
            list(RunStep.objects.filter(run=run).values("input", "output", "error")),
            list(RunEvent.objects.filter(run=run).values_list("payload", flat=True)),
            Run.objects.filter(pk=run.pk).values("output", "error").get(),
        ],
        default=str,
    )


def assert_denied(run: Run, policy: Any, error_type: str = "policy_denied", node: str = "think"):
    assert run.status == "failed", run.error
    error = step_of(run, node).error
    assert error is not None
    assert error["type"] == error_type, error
    assert policy.name in error["message"]
    assert error["policy"]["id"] == policy.pk
    assert error["retryable"] is False
    (decision,) = [d for d in decisions_of(run) if d.policy_id == policy.pk]
    assert decision.mode == "enforce" and decision.node_id == node
    assert policy_events(run)[-1]["policy"] == policy.pk
    return decision


def assert_audited(run: Run, policy: Any, outcome: str) -> PolicyDecision:
    assert run.status == "succeeded", run.error
    decisions = [d for d in decisions_of(run) if d.policy_id == policy.pk]
    assert decisions and {d.outcome for d in decisions} == {outcome}
    assert all(d.mode == "audit" and d.reason.startswith("[audit]") for d in decisions)
    assert any(e["outcome"] == outcome for e in policy_events(run))
    return decisions[0]


# --- model calls -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_allowed_models(cast, mode):
    make_agent(cast, model="sim-2")
    policy = make_policy(
        cast.project, cast.owner, "allowed_models", {"models": ["simulated/sim-1"]}, mode=mode
    )
    run = run_of(cast, agent_workflow(cast))
    if mode == "enforce":
        decision = assert_denied(run, policy)
        assert decision.point == "model_call" and decision.outcome == "deny"
        assert "simulated/sim-2" in decision.reason
        assert not RunEvent.objects.filter(run=run, type="llm.call").exists()  # never called
    else:
        assert_audited(run, policy, "audit_deny")
        assert run.output == {"answer": "Echo: Tell me about otters"}


def test_allowed_models_lets_a_matching_model_through(cast):
    make_agent(cast, model="sim-1")
    make_policy(cast.project, cast.owner, "allowed_models", {"models": ["simulated/sim-*"]})
    run = run_of(cast, agent_workflow(cast))
    assert run.status == "succeeded" and decisions_of(run) == []


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_max_tokens_per_call_deny(cast, mode):
    make_agent(cast)  # no max_tokens: asks for no limit
    policy = make_policy(
        cast.project,
        cast.owner,
        "max_tokens_per_call",
        {"max_tokens": 256, "action": "deny"},
        mode=mode,
    )
    run = run_of(cast, agent_workflow(cast))
    if mode == "enforce":
        assert "at most 256" in assert_denied(run, policy).reason
    else:
        assert_audited(run, policy, "audit_deny")


def test_max_tokens_per_call_clamps_the_request(cast):
    agent = make_agent(cast)
    agent_services.agent_update(agent=agent, actor=cast.owner, max_tokens=4000)
    policy = make_policy(cast.project, cast.owner, "max_tokens_per_call", {"max_tokens": 256})
    run = run_of(cast, agent_workflow(cast))
    assert run.status == "succeeded", run.error
    (decision,) = decisions_of(run)
    assert decision.policy_id == policy.pk and decision.outcome == "clamp"
    assert decision.details == {"max_tokens": 4000, "limit": 256}


def test_max_tokens_per_call_refuses_a_long_prompt(cast):
    make_agent(cast)
    policy = make_policy(
        cast.project, cast.owner, "max_tokens_per_call", {"max_tokens": 256, "max_input_tokens": 5}
    )
    run = run_of(cast, agent_workflow(cast, prompt="{{ input.topic }} " * 20))
    assert "input tokens" in assert_denied(run, policy).reason


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_max_cost_per_run(cast, mode):
    looping_agent(cast, calls=4)
    policy = make_policy(
        cast.project, cast.owner, "max_cost_per_run", {"max_cost_usd": "0.005"}, mode=mode
    )
    run = run_of(cast, agent_workflow(cast))
    if mode == "enforce":
        # calls 1 (0 spent) and 2 (0.003 spent) go; call 3 (0.006 spent) is refused
        decision = assert_denied(run, policy)
        assert decision.details["run_cost"] == "0.006000"
        assert str(run.cost) == "0.006000"
        assert RunEvent.objects.filter(run=run, type="llm.call").count() == 2
    else:
        assert_audited(run, policy, "audit_deny")
        assert str(run.cost) == "0.012000"


# --- tool calls --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_tool_allowlist_in_an_agent_loop(cast, mode):
    calc = builtin_tool(cast.project, cast.owner, "calculator", "calculator")
    make_agent(
        cast,
        tools=[calc],
        mode="script",
        turns=[
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
            {"content": "It is {last_tool_result}"},
        ],
    )
    policy = make_policy(
        cast.project, cast.owner, "tool_allowlist", {"tools": ["http-*"]}, mode=mode
    )
    run = run_of(cast, agent_workflow(cast))
    if mode == "enforce":
        decision = assert_denied(run, policy)
        assert decision.point == "tool_call" and "calculator" in decision.reason
        assert not RunEvent.objects.filter(run=run, type="tool.call").exists()
    else:
        assert_audited(run, policy, "audit_deny")
        assert run.output == {"answer": 'It is {"result": 42}'}


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_tool_denylist_on_a_tool_step(cast, mode):
    builtin_tool(cast.project, cast.owner, "calculator", "calculator")
    policy = make_policy(cast.project, cast.owner, "tool_denylist", {"tools": ["calc*"]}, mode=mode)
    run = run_of(cast, tool_workflow(cast, "calculator", {"expression": "1+1"}))
    if mode == "enforce":
        assert "calc*" in assert_denied(run, policy, node="act").reason
    else:
        assert_audited(run, policy, "audit_deny")
        assert step_of(run, "act").output == {"result": 2}


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_tool_requires_approval(cast, mode):
    builtin_tool(cast.project, cast.owner, "calculator", "calculator")
    policy = make_policy(
        cast.project, cast.owner, "tool_requires_approval", {"tools": ["calculator"]}, mode=mode
    )
    workflow = tool_workflow(cast, "calculator", {"expression": "1+1"})
    if mode == "audit":
        run = run_of(cast, workflow)
        assert_audited(run, policy, "audit_require_approval")
        return
    # Enforced: the tool step waits for an approval instead of running.
    for approve, expected in ((True, "succeeded"), (False, "failed")):
        run = services.run_create(workflow=workflow, input={}, actor=cast.owner)
        run = wait_for_run(run.pk, ("waiting_approval",))
        step = step_of(run, "act")
        assert step.status == "waiting_approval"
        assert step.input["policy"] is True and "needs an approval" in step.input["message"]
        decision = PolicyDecision.objects.get(run=run, policy=policy)
        assert decision.outcome == "require_approval"
        services.step_decide(run=run, node_id="act", actor=cast.developer, approve=approve)
        run = wait_for_run(run.pk)
        assert run.status == expected, run.error
        if approve:
            assert step_of(run, "act").output == {"result": 2}
            assert step_of(run, "act").attempt == 1


def test_tool_requires_approval_in_an_agent_loop_pauses_the_step(cast):
    """More (real SDKs, reject, per-call approval): runs/tests/test_engine_agent_approval.py."""
    calc = builtin_tool(cast.project, cast.owner, "calculator", "calculator")
    make_agent(
        cast,
        tools=[calc],
        mode="script",
        turns=[
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
            {"content": "It is {last_tool_result}"},
        ],
    )
    policy = make_policy(cast.project, cast.owner, "tool_requires_approval", {"tools": ["calc*"]})
    run = services.run_create(
        workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
    )
    run = wait_for_run(run.pk, ("waiting_approval",))
    assert step_of(run).status == "waiting_approval"
    (decision,) = decisions_of(run)
    assert (decision.policy_id, decision.outcome) == (policy.pk, "require_approval")
    assert not RunEvent.objects.filter(run=run, type="tool.call").exists()
    services.step_decide(run=run, node_id="think", actor=cast.developer, approve=True)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": 'It is {"result": 42}'}
    assert RunEvent.objects.filter(run=run, type="llm.call").count() == 2


# --- content: blocked patterns and PII ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_blocked_pattern_in_the_output_denies(cast, mode):
    make_agent(cast, mode="fixed", reply="The plan for Project X is ready.")
    policy = make_policy(
        cast.project, cast.owner, "blocked_patterns", {"patterns": [r"project\s+x"]}, mode=mode
    )
    run = run_of(cast, agent_workflow(cast))
    if mode == "enforce":
        decision = assert_denied(run, policy)
        assert decision.point == "model_output"
        assert "Project X" not in stored(run)
    else:
        assert_audited(run, policy, "audit_deny")
        assert run.output == {"answer": "The plan for Project X is ready."}


def test_blocked_pattern_redacts_the_output(cast):
    make_agent(cast, mode="fixed", reply="The plan for Project X is ready.")
    policy = make_policy(
        cast.project,
        cast.owner,
        "blocked_patterns",
        {"patterns": [r"project\s+x"], "action": "redact", "replacement": "[codename]"},
    )
    run = run_of(cast, agent_workflow(cast))
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": "The plan for [codename] is ready."}
    (decision,) = decisions_of(run)
    assert decision.policy_id == policy.pk and decision.outcome == "redact"
    assert "Project X" not in stored(run)


def test_blocked_pattern_in_the_prompt_stops_before_the_model_is_called(cast):
    make_agent(cast)
    policy = make_policy(
        cast.project,
        cast.owner,
        "blocked_patterns",
        {"patterns": ["otters"], "apply_to": ["prompt"]},
    )
    run = run_of(cast, agent_workflow(cast))
    assert assert_denied(run, policy).point == "prompt"
    assert not RunEvent.objects.filter(run=run, type="llm.call").exists()


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_pii_in_the_output(cast, mode):
    make_agent(cast, mode="fixed", reply=f"Write to {EMAIL} or pay with {CARD}.")
    policy = make_policy(cast.project, cast.owner, "pii", {"action": "redact"}, mode=mode)
    run = run_of(cast, agent_workflow(cast))
    if mode == "enforce":
        assert run.status == "succeeded", run.error
        assert run.output == {"answer": "Write to [REDACTED_EMAIL] or pay with [REDACTED_CARD]."}
        assert step_of(run).output == {
            "text": "Write to [REDACTED_EMAIL] or pay with [REDACTED_CARD]."
        }
        (decision,) = decisions_of(run)
        assert decision.outcome == "redact" and decision.details["found"] == {
            "card": 1,
            "email": 1,
        }
        # Not in the step output, the run output, the events or the decision.
        assert EMAIL not in stored(run) and CARD not in stored(run)
        assert EMAIL not in decision.reason
    else:
        assert_audited(run, policy, "audit_redact")
        assert EMAIL in run.output["answer"]


def test_pii_in_the_prompt_is_redacted_before_it_is_recorded_or_sent(cast):
    make_agent(cast)  # echo: the reply shows what the model received
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["prompt"]})
    run = run_of(cast, agent_workflow(cast), topic=f"mail {EMAIL}")
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": "Echo: Tell me about mail [REDACTED_EMAIL]"}
    assert step_of(run).input["prompt"] == "Tell me about mail [REDACTED_EMAIL]"
    (decision,) = decisions_of(run)
    assert decision.point == "prompt"
    # the run's own input keeps what the caller sent; nothing the engine recorded has it
    recorded = json.dumps(
        [
            list(RunStep.objects.filter(run=run).values("input", "output")),
            list(RunEvent.objects.filter(run=run).values_list("payload", flat=True)),
            run.output,
        ]
    )
    assert EMAIL not in recorded


def test_pii_deny(cast):
    make_agent(cast, mode="fixed", reply=f"Call {EMAIL}")
    policy = make_policy(cast.project, cast.owner, "pii", {"action": "deny", "detect": ["email"]})
    run = run_of(cast, agent_workflow(cast))
    assert "1 email" in assert_denied(run, policy).reason
    assert EMAIL not in stored(run)


def test_pii_in_tool_arguments_is_redacted_before_the_tool_runs(cast):
    builtin_tool(cast.project, cast.owner, "noop", "noop")
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["tool_arguments"]})
    workflow = tool_workflow(cast, "noop", {"to": "{{ input.email }}", "n": 1})
    run = run_of(cast, workflow, email=EMAIL)
    assert run.status == "succeeded", run.error
    step = step_of(run, "act")
    assert step.input == {"to": "[REDACTED_EMAIL]", "n": 1}
    assert step.output == {"to": "[REDACTED_EMAIL]", "n": 1}  # what the tool received
    assert EMAIL not in stored(run)


def test_tool_results_fed_back_to_the_model_are_scanned_as_prompt(cast):
    noop = builtin_tool(cast.project, cast.owner, "noop", "noop")
    make_agent(
        cast,
        tools=[noop],
        mode="script",
        turns=[
            {"tool_calls": [{"name": "noop", "arguments": {"card": CARD}}]},
            {"content": "Tool said {last_tool_result}"},
        ],
    )
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["prompt"], "detect": ["card"]})
    run = run_of(cast, agent_workflow(cast))
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": 'Tool said {"card": "[REDACTED_CARD]"}'}


def test_global_policy_applies_to_every_project(cast, settings):
    from accounts.tests.factories import UserFactory

    staff = UserFactory(is_staff=True)
    make_agent(cast, model="sim-2")
    policy = make_policy(
        None, staff, "allowed_models", {"models": ["openai/*"]}, name="Only OpenAI"
    )
    run = run_of(cast, agent_workflow(cast))
    decision = assert_denied(run, policy)
    assert "global policy 'Only OpenAI'" in decision.reason


def test_disabled_policies_and_priority(cast):
    make_agent(cast, mode="fixed", reply=f"mail {EMAIL}")
    make_policy(cast.project, cast.owner, "pii", {"action": "deny"}, enabled=False, name="off")
    make_policy(cast.project, cast.owner, "pii", {"action": "redact"}, priority=10, name="first")
    make_policy(cast.project, cast.owner, "pii", {"action": "deny"}, priority=20, name="second")
    run = run_of(cast, agent_workflow(cast))
    # "first" redacts, so "second" finds nothing left to deny; "off" is never evaluated
    assert run.status == "succeeded", run.error
    assert [d.source_name for d in decisions_of(run)] == ["first"]


def test_pii_in_a_tool_output_is_redacted_before_it_is_recorded(cast):
    builtin_tool(cast.project, cast.owner, "noop", "noop")  # answers its arguments
    make_policy(cast.project, cast.owner, "pii", {"apply_to": ["tool_output"]})
    run = run_of(cast, tool_workflow(cast, "noop", {"to": "{{ input.email }}"}), email=EMAIL)
    assert run.status == "succeeded", run.error
    step = step_of(run, "act")
    assert step.input == {"to": EMAIL}  # the arguments are not in this policy's scope
    assert step.output == {"to": "[REDACTED_EMAIL]"}
    (call,) = RunEvent.objects.filter(run=run, type="tool.call")
    assert call.payload["output_preview"] == '{"to": "[REDACTED_EMAIL]"}'
    assert decisions_of(run)[0].point == "tool_call"


def test_a_denied_tool_output_in_an_agent_loop_fails_the_step(cast):
    noop = builtin_tool(cast.project, cast.owner, "noop", "noop")
    make_agent(
        cast,
        tools=[noop],
        mode="script",
        turns=[
            {"tool_calls": [{"name": "noop", "arguments": {"code": "PROJECT X"}}]},
            {"content": "{last_tool_result}"},
        ],
    )
    policy = make_policy(
        cast.project,
        cast.owner,
        "blocked_patterns",
        {"patterns": ["project x"], "apply_to": ["tool_output"]},
    )
    run = run_of(cast, agent_workflow(cast))
    assert "tool output" in assert_denied(run, policy).reason
    assert RunEvent.objects.filter(run=run, type="llm.call").count() == 1
