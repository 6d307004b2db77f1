"""Governance checks the engine calls at its fixed points (DESIGN.md §7), implemented by
`policies.enforcement`. Each records every decision that is not a plain allow (a
PolicyDecision and a `policy.decision` run event); an enforced denial raises."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any


def cached() -> AbstractContextManager[None]:
    """Read each project's policies once inside the block (see `policies_cached`)."""
    from policies import enforcement

    return enforcement.policies_cached()


class ToolApprovalRequired(Exception):
    """An enforced `tool_requires_approval` policy holds a tool call a model made in an agent
    loop (the decision is recorded): the loop saves its state and pauses the step for a
    person's decision (runs.engine.agent) instead of failing it. `arguments` are the call's,
    after content rules: what the tool gets once approved."""

    def __init__(self, reason: str, *, arguments: Any, policy: dict[str, Any] | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.arguments = arguments
        self.policy = policy


def before_run_start(*, workflow: Any, input: dict[str, Any], actor: Any) -> None:
    """Raise a SparkOpsError to refuse a run before it is created: 409 `policy_denied` naming
    the policy (max concurrent runs, allowed hours), 402 `budget_exceeded` naming the budget."""
    from policies import enforcement

    enforcement.check_run_start(workflow=workflow, input=input, actor=actor)


def on_prompt(*, step: Any, agent: Any, text: str) -> str:
    """The rendered prompt after content rules (blocked patterns, PII): redacted, or a
    `policy_denied` StepError. Call before the prompt is recorded or sent."""
    from policies import enforcement

    return enforcement.check_prompt(step=step, agent=agent, text=text)


def before_model_call(*, step: Any, agent: Any, request: Any) -> None:
    """Allowed models, max tokens per call (may lower `request.max_tokens`), max cost per run
    and `block` budgets; tool results fed back since the last call get the prompt's content
    rules (in place). Raises StepError `policy_denied` / `budget_exceeded`."""
    from policies import enforcement

    enforcement.check_model_call(step=step, agent=agent, request=request)


def on_model_output(*, step: Any, agent: Any, content: str | None) -> str | None:
    """The model's reply after content rules: redacted, or a `policy_denied` StepError."""
    from policies import enforcement

    return enforcement.check_model_output(step=step, agent=agent, content=content)


def before_tool_call(
    *, step: Any, tool: Any, arguments: Any, call_approved: bool | None = None
) -> Any:
    """Tool allow/deny lists and approvals, then content rules over the arguments. Returns the
    arguments to record and use; raises StepError `policy_denied`. `call_approved` is given for
    a call a model made in an agent loop (whether a person approved that very call): an
    unapproved call a policy holds raises ToolApprovalRequired. A tool step's own call is
    approved by a decision on the step; the planner holds it before it runs
    (`tool_needs_approval`), so `approval_required` is left only as a safety net."""
    from policies import enforcement

    return enforcement.check_tool_call(
        step=step, tool=tool, arguments=arguments, call_approved=call_approved
    )


def on_tool_result(*, step: Any, tool: Any, output: Any) -> Any:
    """A tool's output after content rules, before it is recorded or fed back: redacted, or a
    `policy_denied` StepError."""
    from policies import enforcement

    return enforcement.check_tool_result(step=step, tool=tool, output=output)


def tool_needs_approval(*, run: Any, node_id: str, tool_name: str) -> str | None:
    """For the planner (call with the run locked, when a tool node is ready): the reason the
    node must wait for an approval before it is queued, recorded as a decision; None to queue
    it. (Calls a model makes inside an agent step are held at execution time instead:
    `before_tool_call` with `call_approved`.)"""
    from policies import enforcement

    return enforcement.pause_for_approval(run=run, node_id=node_id, tool_name=tool_name)
