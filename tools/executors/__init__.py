"""Tool executors: run a validated tool call and report a ToolResult. `tools.services.
tool_execute` validates the arguments and calls `execute`; nothing else should."""

from __future__ import annotations

import time
from typing import Any

from projects.secrets import SecretBag

from ..models import Tool
from .builtin import BuiltinError, run_builtin
from .http import execute_http
from .mcp import execute_mcp
from .result import FileScope, ToolResult

__all__ = ["FileScope", "ToolResult", "execute"]


def execute(
    *,
    tool: Tool | Any,
    arguments: dict[str, Any],
    secrets: SecretBag,
    idempotency_key: str | None = None,
    timeout: float | None = None,
    files: FileScope | None = None,
) -> ToolResult:
    if tool.kind == Tool.Kind.HTTP:
        return execute_http(
            config=tool.config,
            arguments=arguments,
            secrets=secrets,
            idempotency_key=idempotency_key,
            timeout=timeout,
            files=files,
        )
    if tool.kind == "mcp":  # an McpTool (tools.mcp_services), not a Tool row
        return execute_mcp(tool=tool, arguments=arguments, secrets=secrets, timeout=timeout)
    if tool.kind == Tool.Kind.BUILTIN:
        return _execute_builtin(tool=tool, arguments=arguments, secrets=secrets)
    return ToolResult(output=None, ok=False, latency_ms=0.0, error=f"Unknown kind {tool.kind!r}.")


def _execute_builtin(*, tool: Tool, arguments: dict[str, Any], secrets: SecretBag) -> ToolResult:
    started = time.perf_counter()
    try:
        output = run_builtin(tool.config, arguments)
    except BuiltinError as exc:
        return ToolResult(
            output=None,
            ok=False,
            latency_ms=_since(started),
            error=secrets.redact(str(exc)),
        )
    return ToolResult(output=secrets.redact(output), ok=True, latency_ms=_since(started))


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
