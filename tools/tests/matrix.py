"""Tool routes for tests/test_cross_tenant.py: an outsider gets 404 on all of them, a viewer of
the project reads (200) and cannot write (403)."""

from __future__ import annotations

from typing import Any

from tests.routes import ObjectRoute


def _tool(cast: Any) -> dict[str, Any]:
    from tools.tests.factories import ToolFactory

    return {"pk": ToolFactory(project=cast.project, created_by=cast.owner).pk}


def _version(cast: Any) -> dict[str, Any]:
    return {**_tool(cast), "number": 1}


def _mcp_server(cast: Any) -> dict[str, Any]:
    """A server with one snapshot, made without the network (the routes are refused before
    any call for outsiders and viewers)."""
    from tools.models import McpServer, McpToolset

    server = McpServer.objects.create(
        project=cast.project,
        name="matrix",
        url="https://mcp.example.com/mcp",
        created_by=cast.owner,
        tools_version=1,
    )
    McpToolset.objects.create(server=server, number=1, tools=[], digest="0" * 64)
    return {"pk": server.pk}


def _mcp_toolset(cast: Any) -> dict[str, Any]:
    return {**_mcp_server(cast), "number": 1}


ROUTES = {
    "tool-detail": ObjectRoute(_tool),
    "tool-versions": ObjectRoute(_tool),
    "tool-diff": ObjectRoute(_tool),
    "tool-version-detail": ObjectRoute(_version),
    "tool-rollback": ObjectRoute(_tool),
    "tool-invoke": ObjectRoute(_tool),
    "mcp-server-detail": ObjectRoute(_mcp_server),
    "mcp-server-discover": ObjectRoute(_mcp_server),
    "mcp-server-test": ObjectRoute(_mcp_server),
    "mcp-server-toolsets": ObjectRoute(_mcp_server),
    "mcp-server-toolset-detail": ObjectRoute(_mcp_toolset),
}
