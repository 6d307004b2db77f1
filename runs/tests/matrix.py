"""Cross-tenant routes of the runs API: each builds a finished run in cast.project."""

from runs.models import Run, RunStep
from runs.tests.factories import finished_run
from tests.routes import ObjectRoute


def _run(cast):
    return {"pk": finished_run(cast).pk}


def _waiting(cast):
    run = finished_run(cast, status=Run.Status.WAITING_APPROVAL)
    RunStep.objects.filter(run=run).update(status=RunStep.Status.WAITING_APPROVAL)
    return {"pk": run.pk, "node_id": "a"}


ROUTES = {
    "run-detail": ObjectRoute(_run),
    "run-cancel": ObjectRoute(_run),
    "run-retry": ObjectRoute(_run),
    "run-steps": ObjectRoute(_run),
    "run-events": ObjectRoute(_run),
    "run-stream": ObjectRoute(_run),
    "run-approve": ObjectRoute(_waiting),
    "run-reject": ObjectRoute(_waiting),
    # MCP messages are all POSTs: a viewer lists tools (a read); a viewer's tool call is a tool
    # error, not an HTTP status (runs/tests/test_mcp.py).
    "project-mcp": ObjectRoute(lambda cast: {"pk": cast.project.pk}, viewer_allowed=("post",)),
}
