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
    "schedule-detail": ObjectRoute(lambda cast: {"pk": _schedule(cast).pk}),
    "schedule-preview": ObjectRoute(lambda cast: {"pk": _schedule(cast).pk}),
    "schedule-fires": ObjectRoute(lambda cast: {"pk": _schedule(cast).pk}),
    # Routed from runs/urls.py (they start runs), on the schedules' prefix.
    "schedule-pause": ObjectRoute(lambda cast: {"pk": _schedule(cast).pk}),
    "schedule-resume": ObjectRoute(lambda cast: {"pk": _schedule(cast).pk}),
    "schedule-backfill": ObjectRoute(lambda cast: {"pk": _schedule(cast).pk}),
    "webhook-trigger-detail": ObjectRoute(lambda cast: {"pk": _webhook_trigger(cast).pk}),
    "webhook-trigger-rotate": ObjectRoute(lambda cast: {"pk": _webhook_trigger(cast).pk}),
    "event-trigger-detail": ObjectRoute(lambda cast: {"pk": _event_trigger(cast).pk}),
    # Public: the token is the credential, so there is no member/outsider difference to test;
    # an unknown token answers 404 to everyone (nothing leaks about existing triggers).
    "hook": ObjectRoute(lambda cast: {"token": "whk_" + "0" * 43}, viewer_write=404),
}


def _schedule(cast: Any) -> Any:
    from workflows import schedules
    from workflows.tests.factories import WorkflowFactory

    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    return schedules.schedule_create(
        actor=cast.owner, workflow=workflow, name="m", cron="0 * * * *", input={"name": "x"}
    )


def _webhook_trigger(cast: Any) -> Any:
    from workflows import webhooks
    from workflows.tests.factories import WorkflowFactory

    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    return webhooks.webhook_trigger_create(actor=cast.owner, workflow=workflow, name="m")[0]


def _event_trigger(cast: Any) -> Any:
    from workflows import event_triggers
    from workflows.tests.factories import WorkflowFactory

    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    return event_triggers.event_trigger_create(
        actor=cast.owner, source_workflow=workflow, target_workflow=workflow, name="m"
    )
