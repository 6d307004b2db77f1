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


ROUTES = {
    "tool-detail": ObjectRoute(_tool),
    "tool-versions": ObjectRoute(_tool),
    "tool-version-detail": ObjectRoute(_version),
    "tool-rollback": ObjectRoute(_tool),
    "tool-invoke": ObjectRoute(_tool),
}
