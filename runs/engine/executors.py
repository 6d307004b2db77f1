"""Executing one step attempt by node type. Executors raise `StepError` (with `retryable`) for
failures and call the checkpoint between external calls; they never write step state
themselves beyond usage and call events (through runs.services.steps)."""

from __future__ import annotations

import json
from typing import Any

from runs import observability
from runs.models import RunEvent, RunStep
from runs.services import policy_hooks
from runs.services.engine import referenced, step_states, template_context
from runs.services.steps import Checkpoint, StepError
from sparkops.errors import SparkOpsError
from workflows.templating import TemplateError, render_value

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


def _context(step: RunStep, checkpoint: Checkpoint, *values: Any) -> dict[str, Any]:
    """The template context with the outputs of just the steps `values` reference."""
    names: set[str] = set()
    for value in values:
        names |= referenced(value)
    return template_context(step.run, step_states(step.run_id, names), checkpoint.secrets)


def _render(value: Any, context: dict[str, Any], what: str) -> Any:
    try:
        return render_value(value, context)
    except (TemplateError, SparkOpsError) as exc:
        raise StepError("template_error", f"Cannot render {what}: {exc.detail}") from exc


def execute(*, step: RunStep, node: dict[str, Any], checkpoint: Checkpoint) -> Any:
    checkpoint()
    if step.type == "transform":
        context = _context(step, checkpoint, node.get("output"))
        output = _render(node.get("output"), context, "the transform output")
        checkpoint.record_input(node.get("output"))
        return output
    if step.type == "tool":
        return _execute_tool(step, node, checkpoint)
    if step.type == "agent":
        from .agent import run_agent

        return run_agent(
            step=step,
            node=node,
            checkpoint=checkpoint,
            context=_context(step, checkpoint, node.get("prompt"), node.get("system_prompt")),
        )
    raise StepError("unsupported_node", f"Node type '{step.type}' cannot be executed.")


def _execute_tool(step: RunStep, node: dict[str, Any], checkpoint: Checkpoint) -> Any:
    from tools.models import Tool

    tool = checkpoint.tool_named(node["tool"])
    if tool is None or tool.status != Tool.Status.ACTIVE:
        raise StepError("tool_unavailable", f"Tool '{node['tool']}' is missing or disabled.")
    args = node.get("args") or {}
    arguments = _render(args, _context(step, checkpoint, args), "the tool arguments")
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


@observability.tool_call
def call_tool(
    *,
    step: RunStep,
    checkpoint: Checkpoint,
    tool: Any,
    arguments: Any,
    idempotency_key: str,
    iteration: int | None = None,
) -> Any:
    """Execute a tool (validated against its schema) and record a `tool.call` event."""
    from tools.services import tool_execute

    checkpoint()
    try:
        result = tool_execute(
            tool=tool,
            arguments=arguments,
            secrets=checkpoint.secrets,
            idempotency_key=idempotency_key,
            timeout=max(min(checkpoint.remaining(), 300.0), 0.1),
        )
    except SparkOpsError as exc:
        checkpoint.event(
            RunEvent.Type.TOOL_CALL,
            checkpoint.secrets.redact(
                {
                    "tool": tool.name,
                    "arguments": arguments,
                    "ok": False,
                    "error": str(exc.detail),
                    "errors": exc.errors,
                    **({"iteration": iteration} if iteration is not None else {}),
                }
            ),
        )
        raise StepError(exc.error_type, str(exc.detail), errors=exc.errors) from exc
    if result.ok:  # content rules, before the output is recorded or used
        result.output = policy_hooks.on_tool_result(step=step, tool=tool, output=result.output)
    checkpoint.event(
        RunEvent.Type.TOOL_CALL,
        checkpoint.secrets.redact(
            {
                "tool": tool.name,
                "arguments": arguments,
                "ok": result.ok,
                "latency_ms": round(result.latency_ms, 2),
                "http_status": result.http_status,
                "error": result.error,
                "output_preview": _preview(result.output),
                **({"iteration": iteration} if iteration is not None else {}),
            }
        ),
    )
    return result


def _preview(value: Any, limit: int = 500) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"
