"""An MCP server over stdio for the tests (the official SDK's MCPServer), run as a script by the
stdio transport: `add`, and `env` (the value of one environment variable)."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("spark-stdio")


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}


@server.tool(description="The value of one environment variable.")
def env(name: str) -> str:
    return os.environ.get(name, "")


if __name__ == "__main__":
    server.run("stdio")
