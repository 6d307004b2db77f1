"""Where workflows listens to its own deletes and answers the layers below it."""

from __future__ import annotations

from typing import Any

from . import schedules
from .models import Workflow


def on_schedule_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A schedule went, maybe with its workflow or project: its beat entry goes too."""
    schedules.schedule_unsync(instance)


def workflows_using_agent(sender: Any, agent: Any, **kwargs: Any) -> list[str]:
    """Answers agents.signals.agent_used_by: names of the project's non-archived workflows with
    an agent node naming this agent (by slug, or by id)."""
    names = {agent.slug, str(agent.pk)}
    users = []
    workflows = (
        Workflow.objects.filter(project_id=agent.project_id)
        .exclude(status=Workflow.Status.ARCHIVED)
        .only("name", "definition")
    )
    for workflow in workflows:
        definition = workflow.definition if isinstance(workflow.definition, dict) else {}
        nodes = definition.get("nodes")
        for node in nodes if isinstance(nodes, list) else []:
            if (
                isinstance(node, dict)
                and node.get("type") == "agent"
                and str(node.get("agent")) in names
            ):
                users.append(workflow.name)
                break
    return users


def on_project_status_changed(sender: Any, project: Any, **kwargs: Any) -> None:
    """Archived projects fire no schedules; restored ones fire them again. Runs in the
    transaction that changed the status, so beat's table agrees with it."""
    schedules.schedules_sync_project(project)
