"""What templates of a step see: the run's input, the steps they read (loaded by name), the run
and the project's secrets."""

from __future__ import annotations

from typing import Any

from projects.secrets import SecretBag
from runs.models import Run, RunStep
from sparkops.templating import referenced_steps


def template_context(run: Run, steps: dict[str, Any], secrets: SecretBag | None) -> dict[str, Any]:
    """What templates see: input, steps (output, status and error of each), run, secrets.
    `steps` maps node ids to RunStep rows or to dicts with those keys."""

    def state(step: Any) -> dict[str, Any]:
        if isinstance(step, dict):
            return step
        return {"output": step.output, "status": step.status, "error": step.error}

    return {
        "input": run.input,
        "steps": {node_id: state(step) for node_id, step in steps.items()},
        "run": {"id": str(run.pk), "workflow": str(run.workflow_id), "trigger": run.trigger},
        "secrets": secrets.template_view() if secrets is not None else {},
    }


def step_states(run_id: Any, node_ids: Any = None) -> dict[str, dict[str, Any]]:
    """Output, status and error of the given steps (all when None), in one query. Templates
    name the steps they read, so a step of a 500-node run loads what it needs, not 500 rows."""
    rows = RunStep.objects.filter(run_id=run_id, item_index__isnull=True)  # not map items
    if node_ids is not None:
        node_ids = list(node_ids)
        if not node_ids:
            return {}
        rows = rows.filter(node_id__in=node_ids)
    return {
        row["node_id"]: {"output": row["output"], "status": row["status"], "error": row["error"]}
        for row in rows.values("node_id", "output", "status", "error")
    }


def referenced(value: Any, *, condition: bool = False) -> set[str]:
    return set(referenced_steps(value, condition=condition)) if value is not None else set()
