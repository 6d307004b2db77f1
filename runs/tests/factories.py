"""Workflows for engine tests, built through the real services."""

from __future__ import annotations

from typing import Any

from workflows import services as workflow_services


def make_workflow(project: Any, actor: Any, nodes: list[dict[str, Any]], **fields: Any) -> Any:
    definition = {"nodes": nodes}
    for key in ("input_schema", "output"):
        if key in fields:
            definition[key] = fields.pop(key)
    fields.setdefault("name", "wf")
    return workflow_services.workflow_create(
        actor=actor, project=project, definition=definition, **fields
    )


def transform(id: str, output: Any, *depends_on: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": id,
        "type": "transform",
        "output": output,
        "depends_on": list(depends_on),
        **extra,
    }


def finished_run(cast: Any, status: str = "succeeded") -> Any:
    """A run row in a given status without executing anything (for API and admin tests)."""
    from runs.models import Run, RunStep

    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)], name=f"wf-{status}")
    run = Run.objects.create(
        project=cast.project,
        workflow=workflow,
        version=workflow.current_version,
        status=status,
        input={},
        created_by=cast.owner,
    )
    RunStep.objects.create(run=run, node_id="a", type="transform", status="succeeded", output=1)
    return run
