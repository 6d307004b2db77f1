"""A real MCP server for the tests: the official SDK's MCPServer over streamable HTTP (and the
older SSE transport) under uvicorn, in a thread, on a free 127.0.0.1 port.

Tools: `add` (structured result), `echo_headers` (what the client sent, to check secrets in
headers), `fail` (the tool reports an error), `hang` (never answers: for timeouts; cancelled
when the server stops)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.applications import Starlette


def build_server(calls: list[dict[str, Any]]) -> MCPServer:
    server = MCPServer("spark-test")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> dict[str, int]:
        calls.append({"tool": "add", "a": a, "b": b})
        return {"sum": a + b}

    @server.tool(description="The value of one request header.")
    def echo_header(name: str, ctx: Context) -> str:
        request = ctx.request_context.request
        value = request.headers.get(name, "") if request is not None else ""
        calls.append({"tool": "echo_header", "name": name, "value": value})
        return value

    @server.tool(description="Always fails.")
    def fail(reason: str) -> str:
        calls.append({"tool": "fail", "reason": reason})
        raise ToolError(f"refused: {reason}")

    @server.tool(description="Never answers.")
    async def hang() -> str:
        calls.append({"tool": "hang"})
        await anyio.Event().wait()
        return "never"

    return server


class McpTestServer:
    """`with McpTestServer() as s:` serves `s.url` (streamable HTTP) and `s.sse_url` (SSE)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        mcp = build_server(self.calls)
        http_app = mcp.streamable_http_app(stateless_http=False)
        sse_app = mcp.sse_app()
        app = Starlette(
            routes=[*http_app.routes, *sse_app.routes],
            lifespan=http_app.router.lifespan_context,
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def sse_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sse"

    def __enter__(self) -> McpTestServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            self._thread.join(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(10)


_shared: McpTestServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> McpTestServer:
    """One server for the whole test process, started on first use (a daemon thread that ends
    with the process): for route walks that need a reachable MCP server among other things."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = McpTestServer().__enter__()
        return _shared
