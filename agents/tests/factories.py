from __future__ import annotations

from typing import Any

import factory

from agents import services
from agents.models import Agent
from projects import services as project_services
from projects.tests.factories import ProjectFactory
from tools.models import Tool


class AgentFactory(factory.django.DjangoModelFactory):
    """Creates through `services.agent_create` (so version 1 exists, like every real agent).
    Pass `tools=[...]` for tools and `created_by=` for the actor (default: the project owner)."""

    class Meta:
        model = Agent

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"Agent {n}")
    slug = factory.Sequence(lambda n: f"agent-{n}")
    provider = Agent.Provider.SIMULATED
    model = "sim-1"

    @classmethod
    def _create(cls, model_class: type[Agent], *args: Any, **kwargs: Any) -> Agent:
        project = kwargs.pop("project")
        actor = kwargs.pop("created_by", None) or project.owner
        return services.agent_create(actor=actor, project=project, **kwargs)


def tool_for(project: Any = None, *, name: str | None = None, **fields: Any) -> Tool:
    """A tool of `project`, or a global tool when `project` is None (test data only: tools
    have their own services in the tools app)."""
    tool_for.counter += 1  # type: ignore[attr-defined]
    values: dict[str, Any] = {
        "name": name or f"tool_{tool_for.counter}",  # type: ignore[attr-defined]
        "kind": Tool.Kind.BUILTIN,
        "description": "A test tool.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        "config": {"function": "echo"},
        "project": project,
        "is_global": project is None,
    }
    values.update(fields)
    return Tool.objects.create(**values)


tool_for.counter = 0  # type: ignore[attr-defined]


def scripted_agent(cast: Any, *, model: str, tool: Any) -> Agent:
    """A simulated agent ("helper") that calls `tool` once, then answers: two model calls of 7
    input and 3 output tokens each."""
    return services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Helper",
        slug="helper",
        provider="simulated",
        model=model,
        tools=[tool.pk],
        settings={
            "mode": "script",
            "turns": [
                {"tool_calls": [{"name": tool.name, "arguments": {"expression": "2+2"}}]},
                {"content": "Result: {last_tool_result}"},
            ],
            "input_tokens": 7,
            "output_tokens": 3,
        },
    )


def remote_agent(cast: Any, *, slug: str, base_url: str, key: str = "sk-x") -> Agent:
    """An OpenAI agent ("Remote", model gpt-test-1) at `base_url` (a FakeLLMServer's), its API
    key in the project secret "key"."""
    project_services.secret_create(project=cast.project, actor=cast.owner, name="key", value=key)
    return services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Remote",
        slug=slug,
        provider="openai",
        model="gpt-test-1",
        base_url=base_url,
        credentials_secret="key",
    )
