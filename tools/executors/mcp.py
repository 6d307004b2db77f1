"""MCP tools: one `tools/call` on the tool's server (tools.mcp_client), its outcome as a
ToolResult. A tool that reports an error is a failed call (not retryable); a transport failure
(connect, timeout, a dropped stream, 5xx) is retryable."""

from __future__ import annotations

from typing import Any

from projects.secrets import SecretBag

from .. import mcp_client
from .result import ToolResult


def execute_mcp(
    *, tool: Any, arguments: dict[str, Any], secrets: SecretBag, timeout: float | None
) -> ToolResult:
    server = tool.server
    limit = float(server.timeout_seconds)
    if timeout is not None:
        limit = min(limit, timeout)
    try:
        outcome = mcp_client.call_tool(server, secrets, tool.tool_name, arguments, limit)
    except mcp_client.McpFailure as exc:
        return ToolResult(
            output=None,
            ok=False,
            latency_ms=0.0,
            error=secrets.redact(exc.message),
            retryable=exc.retryable,
        )
    if outcome.is_error:
        text = outcome.output if isinstance(outcome.output, str) else str(outcome.output)
        return ToolResult(
            output=None,
            ok=False,
            latency_ms=outcome.latency_ms,
            error=secrets.redact(f"MCP tool '{tool.name}' failed: {text}"),
        )
    return ToolResult(output=secrets.redact(outcome.output), ok=True, latency_ms=outcome.latency_ms)
