"""Executing one step attempt by node type. Executors raise `StepError` (with `retryable`) for
failures and call the checkpoint between external calls; they never write step state
themselves beyond usage and call events (through the checkpoint)."""

from __future__ import annotations

from typing import Any

from runs.models import RunStep
from runs.services import policy_hooks
from sparkops.errors import SparkOpsError
from sparkops.templating import TemplateError, evaluate_condition
from tools.models import Tool

from .agent import run_agent
from .checkpoint import Checkpoint
from .context import referenced, step_states, template_context
from .errors import StepError
from .toolcalls import call_tool, render

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def _context(step: RunStep, checkpoint: Checkpoint, *values: Any) -> dict[str, Any]:
    """The template context with the outputs of just the steps `values` reference."""
    names: set[str] = set()
    for value in values:
        names |= referenced(value)
    context = template_context(step.run, step_states(step.run_id, names), checkpoint.secrets)
    if step.item_index is not None:  # an item of a map, an iteration of a loop
        context["item"], context["item_index"] = step.item, step.item_index
        context["previous"], context["iteration"] = step.item, step.item_index
    return context


def execute(*, step: RunStep, node: dict[str, Any], checkpoint: Checkpoint) -> Any:
    checkpoint()
    if step.type == "transform":
        context = _context(step, checkpoint, node.get("output"))
        output = render(node.get("output"), context, "the transform output")
        checkpoint.record_input(node.get("output"))
        return output
    if step.type == "tool":
        return _execute_tool(step, node, checkpoint)
    if step.type == "switch":
        return _execute_switch(step, node, checkpoint)
    if step.type == "agent":
        return run_agent(
            step=step,
            node=node,
            checkpoint=checkpoint,
            context=_context(
                step, checkpoint, node.get("prompt"), node.get("system_prompt"), node.get("files")
            ),
        )
    raise StepError("unsupported_node", f"Node type '{step.type}' cannot be executed.")


def _execute_switch(step: RunStep, node: dict[str, Any], checkpoint: Checkpoint) -> Any:
    """The branch a switch picks: the first case that holds (its `when`, or `value` equal to
    its `equals`), else the `default`; a step error when neither."""
    cases = [case for case in node.get("cases") or [] if isinstance(case, dict)]
    names = referenced(node.get("value"))
    for case in cases:
        names |= referenced(case.get("when"), condition=True)
    context = template_context(step.run, step_states(step.run_id, names), checkpoint.secrets)
    value = None
    if "value" in node:
        value = render(node["value"], context, "the switch value")
    checkpoint.record_input({"value": value} if "value" in node else None)
    for index, case in enumerate(cases):
        if "when" in case:
            try:
                holds = bool(evaluate_condition(case["when"], context))
            except (TemplateError, SparkOpsError) as exc:
                raise StepError(
                    "template_error", f"Cannot evaluate case {index} of the switch: {exc.detail}"
                ) from exc
        else:
            holds = value == case.get("equals")
        if holds:
            return {"branch": case["to"], "case": index, "value": value}
    if isinstance(node.get("default"), str):
        return {"branch": node["default"], "case": None, "value": value}
    shown = f" (value {value!r})" if "value" in node else ""
    raise StepError(
        "no_branch", f"No case of switch '{step.node_id}' holds{shown} and it has no default."
    )


def _execute_tool(step: RunStep, node: dict[str, Any], checkpoint: Checkpoint) -> Any:
    tool = checkpoint.tool_named(node["tool"])
    if tool is None or tool.status != Tool.Status.ACTIVE:
        raise StepError("tool_unavailable", f"Tool '{node['tool']}' is missing or disabled.")
    args = node.get("args") or {}
    arguments = render(args, _context(step, checkpoint, args), "the tool arguments")
    arguments = policy_hooks.before_tool_call(step=step, tool=tool, arguments=arguments)
    checkpoint.record_input(arguments)
    result = call_tool(
        step=step,
        checkpoint=checkpoint,
        tool=tool,
        arguments=arguments,
        idempotency_key=f"{step.run_id}:{step.node_id}",
    )
    if not result.ok:
        checkpoint()  # a call cut short by the step's timeout is a step timeout, not a tool error
        raise StepError(
            "tool_error",
            result.error or f"Tool '{tool.name}' failed.",
            retryable=result.retryable,
            http_status=result.http_status,
        )
    return result.output
