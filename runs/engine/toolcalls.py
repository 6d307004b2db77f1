"""Rendering a step's templates and calling a tool: validated, governed, recorded as a
`tool.call` event."""

from __future__ import annotations

import json
from typing import Any

from runs import observability
from runs.models import RunEvent, RunStep
from runs.services import policy_hooks
from sparkops.errors import SparkOpsError
from sparkops.templating import TemplateError, render_value
from tools.executors import FileScope
from tools.services import tool_execute

from .checkpoint import Checkpoint
from .errors import StepError


def render(value: Any, context: dict[str, Any], what: str) -> Any:
    try:
        return render_value(value, context)
    except (TemplateError, SparkOpsError) as exc:
        raise StepError("template_error", f"Cannot render {what}: {exc.detail}") from exc


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
    checkpoint()
    checkpoint.calls += 1
    try:
        result = tool_execute(
            tool=tool,
            arguments=arguments,
            secrets=checkpoint.secrets,
            idempotency_key=idempotency_key,
            timeout=max(min(checkpoint.remaining(), 300.0), 0.1),
            files=FileScope(
                project=step.run.project_id,
                run_id=step.run_id,
                node_id=step.node_id,
                scan_text=lambda text: policy_hooks.on_tool_result(
                    step=step, tool=tool, output=text
                ),
            ),
        )
    except SparkOpsError as exc:
        checkpoint.event(
            RunEvent.Type.TOOL_CALL,
            checkpoint.secrets.redact(
                {
                    "tool": tool.name,
                    **getattr(tool, "event_fields", {}),
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
                **getattr(tool, "event_fields", {}),  # an MCP tool: its server, tool, snapshot
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
