"""Policies and budgets for tests, built through the real services."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from agents import services as agent_services
from agents.models import ModelPrice
from policies import services
from tools.tests.factories import builtin_tool
from workflows.tests.factories import make_workflow


def make_policy(project: Any, actor: Any, kind: str, rule: dict[str, Any], **fields: Any) -> Any:
    fields.setdefault("name", f"{kind} policy")
    return services.policy_create(actor=actor, project=project, kind=kind, rule=rule, **fields)


def make_budget(project: Any, actor: Any, limit: str = "1.00", **fields: Any) -> Any:
    fields.setdefault("name", "Budget")
    return services.budget_create(actor=actor, project=project, limit_usd=Decimal(limit), **fields)


def sim_priced() -> None:
    """The seeded price of the demo's priced simulated model (1000 / 2000 USD per million
    input / output tokens). Engine tests flush the database, seeded rows included."""
    ModelPrice.objects.get_or_create(
        provider="simulated",
        model_pattern="sim-priced*",
        defaults={
            "input_per_million": Decimal("1000"),
            "output_per_million": Decimal("2000"),
            "cached_input_per_million": Decimal("500"),
        },
    )


def make_agent(cast: Any, *, model: str = "sim-1", tools: Any = (), **settings: Any) -> Any:
    return agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Bot",
        slug="bot",
        provider="simulated",
        model=model,
        tools=[tool.pk for tool in tools],
        settings=settings or {"mode": "echo"},
    )


def agent_workflow(cast: Any, prompt: str = "Tell me about {{ input.topic }}") -> Any:
    return make_workflow(
        cast.project,
        cast.owner,
        [{"id": "think", "type": "agent", "agent": "bot", "prompt": prompt}],
        output={"answer": "{{ steps.think.output.text }}"},
    )


def looping_agent(cast, calls: int, **extra: Any) -> Any:
    """A priced agent that calls the noop tool `calls - 1` times, then answers: `calls` paid
    model calls of 0.003 USD each (1 input and 1 output token at 1000 / 2000 USD per
    million)."""
    sim_priced()
    noop = builtin_tool(cast.project, cast.owner, "noop", "noop")
    turns: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "noop", "arguments": {"n": i}}]} for i in range(calls - 1)
    ]
    turns.append({"content": "done"})
    agent = make_agent(
        cast,
        model="sim-priced",
        tools=[noop],
        mode="script",
        turns=turns,
        input_tokens=1,
        output_tokens=1,
        **extra,
    )
    agent_services.agent_update(agent=agent, actor=cast.owner, max_iterations=50)
    return agent
