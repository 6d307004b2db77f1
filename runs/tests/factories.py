"""Workflows for engine tests, built through the real services."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from agents.models import ModelPrice
from agents.tests.factories import scripted_agent
from tools.tests.factories import builtin_tool
from workflows.tests.factories import make_workflow, transform


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


def active_run(cast: Any) -> Any:
    """A running run's row of a one-transform workflow, nothing executing it (for the event
    stream tests: a stream stays open while its run is active)."""
    from runs.models import Run

    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="streamed")
    return Run.objects.create(
        project=cast.project,
        workflow=workflow,
        version=workflow.current_version,
        status=Run.Status.RUNNING,
        input={},
        created_by=cast.owner,
    )


def model_workflow(cast: Any, base_url: str) -> Any:
    """An `openai_compatible` agent `model` on the OpenAI-compatible server at `base_url` (the
    fake model of sparkops/testing/fake_llm.py) and a workflow of one call to it, `answer`."""
    from agents import services as agent_services

    agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Model",
        slug="model",
        provider="openai_compatible",
        model="fake-model",
        base_url=base_url,
    )
    return make_workflow(
        cast.project,
        cast.owner,
        [{"id": "answer", "type": "agent", "agent": "model", "prompt": "Hi"}],
        name="one model call",
    )


def tool_node(id: str, tool: str, args: Any = None, *depends_on: str, **extra: Any) -> dict:
    return {
        "id": id,
        "type": "tool",
        "tool": tool,
        "args": args or {},
        "depends_on": list(depends_on),
        **extra,
    }


def agent_and_tool_workflow(cast: Any, name: str, tool: Any) -> Any:
    """prep (transform) → think (the "helper" agent: one tool call, two model calls) → sum (a
    step of `tool`)."""
    return make_workflow(
        cast.project,
        cast.owner,
        [
            transform("prep", {"topic": "otters"}),
            {
                "id": "think",
                "type": "agent",
                "agent": "helper",
                "prompt": "Work on {{ steps.prep.output.topic }}",
                "depends_on": ["prep"],
            },
            tool_node("sum", tool.name, {"expression": "1+1"}, "think"),
        ],
        name=name,
    )


def metered_workflow(cast: Any) -> Any:
    """The metrics tests' run: `agent_and_tool_workflow` ("metrics-run") with the helper agent
    on a priced simulated model (sim-metrics: $1000 / $2000 a million tokens) and the
    calculator as its tool."""
    ModelPrice.objects.create(
        provider="simulated",
        model_pattern="sim-metrics*",
        input_per_million=Decimal("1000"),
        output_per_million=Decimal("2000"),
    )
    calc = builtin_tool(cast.project, cast.owner, "calc_metrics", "calculator")
    scripted_agent(cast, model="sim-metrics", tool=calc)
    return agent_and_tool_workflow(cast, "metrics-run", calc)
