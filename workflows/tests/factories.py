from __future__ import annotations

from typing import Any

import factory

from accounts.tests.factories import UserFactory
from projects.tests.factories import ProjectFactory
from workflows import services as workflow_services
from workflows.models import Workflow


def transform_definition(node_id: str = "greet") -> dict[str, Any]:
    """A valid one-node definition that needs no agent or tool."""
    return {
        "input_schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
        "nodes": [
            {"id": node_id, "type": "transform", "output": {"text": "Hello {{ input.name }}"}}
        ],
        "output": {"greeting": f"{{{{ steps.{node_id}.output.text }}}}"},
    }


class WorkflowFactory(factory.django.DjangoModelFactory):
    """Creates through `workflows.services.workflow_create`, so the definition is validated and
    version 1 exists, as for any real workflow."""

    class Meta:
        model = Workflow

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"Workflow {n}")
    definition = factory.LazyFunction(transform_definition)
    created_by = factory.SubFactory(UserFactory)

    @classmethod
    def _create(cls, model_class: type[Workflow], *args: Any, **kwargs: Any) -> Workflow:
        actor = kwargs.pop("created_by")
        return workflow_services.workflow_create(actor=actor, **kwargs)


# Workflows for engine and governance tests, built through the real service.
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
