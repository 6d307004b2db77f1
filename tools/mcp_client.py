"""Talking to MCP servers with the official `mcp` SDK, its HTTP on sparkops.egress.

The SDK is async; each operation (list the tools, call one) opens a session, does its work and
closes it inside one `anyio.run` on the calling thread (a worker's task, a request), the whole
bounded by a deadline. Every byte goes through `egress.sdk_async_http_client`: allow-list,
pinned addresses, re-checked redirects, timeouts and the size cap apply as to any other call.

Failures come back as McpFailure: `retryable` when the transport failed (connect, timeout,
5xx, a dropped stream), not when the server answered with an error or refused the target."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from django.conf import settings
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from projects.secrets import SecretBag
from sparkops import egress
from sparkops.errors import SparkOpsError
from sparkops.templating import TemplateError, render_value

from .models import McpServer

__all__ = ["McpCallOutcome", "McpFailure", "call_tool", "list_tools", "render_headers"]


class McpFailure(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass
class McpCallOutcome:
    output: Any
    is_error: bool
    latency_ms: float


def render_headers(server: McpServer, secrets: SecretBag) -> dict[str, str]:
    """The server's headers with their `{{ secrets.NAME }}` read from the project."""
    headers: dict[str, str] = {}
    for name, value in (server.headers or {}).items():
        try:
            rendered = render_value(value, {"secrets": secrets.template_view()})
        except (TemplateError, SparkOpsError) as exc:
            raise McpFailure(f"headers.{name}: {exc.detail}", retryable=False) from exc
        text = str(rendered)
        if "\n" in text or "\r" in text:
            raise McpFailure(f"headers.{name}: a header value cannot hold a newline.", False)
        headers[name] = text
    return headers


@asynccontextmanager
async def _session(server: McpServer, headers: dict[str, str], timeout: float) -> Any:
    if server.transport == McpServer.Transport.STDIO:
        # An operator allowed this command; `headers` are its environment variables, over the
        # SDK's minimal default environment (HOME, PATH...; not the worker's).
        params = StdioServerParameters(command=server.command, args=list(server.args), env=headers)
        async with Client(params, read_timeout_seconds=timeout) as client:
            yield client
        return
    if server.transport == McpServer.Transport.SSE:

        def factory(headers: Any = None, timeout: Any = None, auth: Any = None) -> Any:
            return egress.sdk_async_http_client(timeout=read_timeout, headers=headers)

        read_timeout = timeout
        transport = sse_client(
            server.url,
            headers=headers,
            timeout=timeout,
            sse_read_timeout=timeout,
            httpx_client_factory=factory,
        )
        async with Client(transport, mode="legacy", read_timeout_seconds=timeout) as client:
            yield client
        return
    async with egress.sdk_async_http_client(timeout=timeout, headers=headers) as http:
        transport = streamable_http_client(server.url, http_client=http)
        async with Client(transport, read_timeout_seconds=timeout) as client:
            yield client


def _run(
    server: McpServer,
    secrets: SecretBag,
    timeout: float,
    work: Callable[[Any], Awaitable[Any]],
) -> Any:
    if not server.enabled:
        raise McpFailure(f"MCP server '{server.name}' is disabled.", retryable=False)
    if server.transport == McpServer.Transport.STDIO:
        allowed = getattr(settings, "SPARKOPS_MCP_STDIO_COMMANDS", None) or []
        if server.command not in allowed:  # checked again: the setting may have changed
            raise McpFailure(
                f"MCP server '{server.name}': stdio command {server.command!r} is not allowed "
                "on this installation (SPARKOPS_MCP_STDIO_COMMANDS).",
                retryable=False,
            )
    else:
        problem = egress.static_url_problem(server.url)  # refused whatever DNS says: say why
        if problem:
            raise McpFailure(f"MCP server '{server.name}': {problem}", retryable=False)
    headers = render_headers(server, secrets)

    async def main() -> Any:
        with anyio.fail_after(timeout):
            async with _session(server, headers, timeout) as client:
                return await work(client)

    try:
        return anyio.run(main)
    except TimeoutError as exc:
        raise McpFailure(
            f"MCP server '{server.name}' did not answer within {timeout:g}s.", retryable=True
        ) from exc
    except BaseException as exc:
        raise _failure(server, exc) from exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    found = [exc]
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        found += _leaves(exc.__cause__)
    return found


# httpx2's errors for a URL it cannot use (by name: only sparkops.egress imports httpx2).
_NOT_RETRYABLE = frozenset({"InvalidURL", "UnsupportedProtocol", "TooManyRedirects"})


def _failure(server: McpServer, exc: BaseException) -> McpFailure:
    """The clearest cause in what the SDK raised (task groups wrap everything)."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, McpFailure):
            return leaf
        if isinstance(leaf, egress.EgressDenied):
            return McpFailure(f"MCP server '{server.name}': {leaf.detail}", retryable=False)
    for leaf in leaves:
        if isinstance(leaf, egress.EgressError):
            return McpFailure(f"MCP server '{server.name}': {leaf.detail}", leaf.retryable)
        if isinstance(leaf, TimeoutError):
            return McpFailure(f"MCP server '{server.name}' timed out.", retryable=True)
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            return McpFailure(f"MCP server '{server.name}' answered an error: {leaf}", False)
    leaf = leaves[-1]
    if type(leaf).__name__ in _NOT_RETRYABLE:
        return McpFailure(f"MCP server '{server.name}': {leaf}", retryable=False)
    text = str(leaf) or type(leaf).__name__
    if type(leaf).__name__ in ("ConnectError", "ConnectTimeout"):
        return McpFailure(f"MCP server '{server.name}' could not be reached: {text}", True)
    status = getattr(getattr(leaf, "response", None), "status_code", None)
    retryable = status is None or status >= 500 or status in (408, 425, 429)
    return McpFailure(f"MCP server '{server.name}' failed: {text}", retryable=retryable)


def list_tools(server: McpServer, secrets: SecretBag, timeout: float) -> list[dict[str, Any]]:
    """The server's tools: [{name, description, input_schema}], every page."""

    async def work(client: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor = None
        for _page in range(100):
            page = await client.list_tools(cursor=cursor) if cursor else await client.list_tools()
            for tool in page.tools:
                found.append(
                    {
                        "name": tool.name,
                        "description": tool.description or "",
                        "input_schema": tool.input_schema or {"type": "object"},
                    }
                )
            cursor = getattr(page, "next_cursor", None)
            if not cursor:
                break
        return found

    result: list[dict[str, Any]] = _run(server, secrets, timeout, work)
    return result


def call_tool(
    server: McpServer,
    secrets: SecretBag,
    name: str,
    arguments: dict[str, Any],
    timeout: float,
) -> McpCallOutcome:
    """Call tool `name`; its structured content when it gives one, else its text content (one
    text block as a string, several as a list). `is_error` when the tool reported a failure."""
    started = time.perf_counter()

    async def work(client: Any) -> Any:
        return await client.call_tool(name, arguments)

    result = _run(server, secrets, timeout, work)
    latency = round((time.perf_counter() - started) * 1000.0, 3)
    structured = getattr(result, "structured_content", None)
    texts = [
        block.text if getattr(block, "type", None) == "text" else block.model_dump(mode="json")
        for block in result.content
    ]
    output: Any = structured if structured is not None else texts
    if structured is None and len(texts) == 1:
        output = texts[0]
    return McpCallOutcome(output=output, is_error=bool(result.is_error), latency_ms=latency)
