"""Object routes of the workflows app for tests/test_cross_tenant.py."""

from __future__ import annotations

from typing import Any

from tests.routes import ObjectRoute


def _workflow(cast: Any) -> dict[str, Any]:
    from workflows.tests.factories import WorkflowFactory

    return {"pk": WorkflowFactory(project=cast.project, created_by=cast.owner).pk}


def _version(cast: Any) -> dict[str, Any]:
    return {**_workflow(cast), "number": 1}


ROUTES = {
    "workflow-detail": ObjectRoute(_workflow),
    "workflow-versions": ObjectRoute(_workflow),
    "workflow-version-detail": ObjectRoute(_version),
    "workflow-diff": ObjectRoute(_workflow),
    "workflow-graph": ObjectRoute(_workflow),
    "workflow-rollback": ObjectRoute(_workflow),
    "workflow-pause": ObjectRoute(_workflow),
    "workflow-activate": ObjectRoute(_workflow),
    "workflow-run": ObjectRoute(_workflow),
}
