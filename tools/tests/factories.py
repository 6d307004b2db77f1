from typing import Any

import factory

from projects.tests.factories import ProjectFactory
from tools import services
from tools.models import Tool

NOOP_CONFIG = {"function": "noop"}


class ToolFactory(factory.django.DjangoModelFactory):
    """A builtin `noop` tool in a fresh project, created through `tool_create` (so it is
    validated and has its version 1). Pass `project=None, is_global=True` for a global tool."""

    class Meta:
        model = Tool

    project = factory.SubFactory(ProjectFactory)
    is_global = False
    name = factory.Sequence(lambda n: f"tool_{n}")
    description = "A tool."
    kind = Tool.Kind.BUILTIN
    config = factory.LazyFunction(lambda: dict(NOOP_CONFIG))
    parameters = factory.LazyFunction(dict)
    status = Tool.Status.ACTIVE

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        actor = kwargs.pop("created_by", None)
        if actor is None:
            project = kwargs.get("project")
            actor = project.owner if project is not None else _staff()
        return services.tool_create(actor=actor, **kwargs)


def _staff():
    from accounts.tests.factories import UserFactory

    return UserFactory(is_staff=True)


def http_config(url: str, **extra) -> dict:
    return {"method": "GET", "url": url, **extra}


def builtin_tool(project: Any, actor: Any, name: str, function: str) -> Any:
    """A built-in tool (`function` names one of tools.builtins), through the real service."""
    return services.tool_create(
        actor=actor, project=project, name=name, kind="builtin", config={"function": function}
    )
