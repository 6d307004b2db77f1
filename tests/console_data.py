"""Test data for the operator console: a workflow with every node type (built through the
services), and a recorded run with an arbitrary timeline (rows written directly, as a test
fixture, so a picture of 50 steps and 500 attempts needs no 500 real attempts)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from agents.models import ModelPrice
from agents.tests.factories import AgentFactory
from runs.models import Run, RunEvent, RunStep
from tools.models import Tool
from workflows import services as workflow_services

RICH_INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "description": "What to research."},
        "depth": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
        "publish": {"type": "boolean", "default": True},
    },
    "required": ["topic"],
}


def rich_workflow(
    project: Any, actor: Any, *, approval: bool = True, name: str = "Research"
) -> Any:
    """research (agent) → summarize (tool) → review (approval) → publish (transform, only
    when the summary is long enough); plus a parallel `notes` transform."""
    ModelPrice.objects.get_or_create(
        provider="simulated",
        model_pattern="sim-*",
        defaults={"input_per_million": Decimal("3"), "output_per_million": Decimal("15")},
    )
    if not project.agents.filter(slug="researcher").exists():
        AgentFactory(
            project=project,
            slug="researcher",
            name="Researcher",
            created_by=actor,
            settings={"mode": "fixed", "reply": "A long and careful answer.", "output_tokens": 120},
        )
    if not Tool.objects.filter(project=project, name="summarize").exists():
        Tool.objects.create(
            project=project,
            name="summarize",
            kind="builtin",
            config={"function": "noop"},
            description="Summarize a text.",
        )
    nodes: list[dict[str, Any]] = [
        {
            "id": "research",
            "type": "agent",
            "agent": "researcher",
            "prompt": "Research {{ input.topic }} to depth {{ input.depth | default(2) }}",
        },
        {
            "id": "notes",
            "type": "transform",
            "output": {"topic": "{{ input.topic }}"},
        },
        {
            "id": "summarize",
            "type": "tool",
            "tool": "summarize",
            "depends_on": ["research"],
            "args": {"text": "{{ steps.research.output }}"},
        },
    ]
    last = "summarize"
    if approval:
        nodes.append(
            {
                "id": "review",
                "type": "approval",
                "depends_on": ["summarize", "notes"],
                "message": "Publish the summary on {{ input.topic }}?",
            }
        )
        last = "review"
    nodes.append(
        {
            "id": "publish",
            "type": "transform",
            "depends_on": [last],
            "when": "{{ input.publish | default(true) }}",
            "output": {"published": "{{ steps.research.output }}"},
        }
    )
    return workflow_services.workflow_create(
        actor=actor,
        project=project,
        name=name,
        definition={
            "input_schema": RICH_INPUT_SCHEMA,
            "nodes": nodes,
            "output": {"text": "{{ steps.research.output }}"},
        },
    )


def chain_definition(size: int, *, fan: int = 1) -> dict[str, Any]:
    """`size` transforms: a chain where every node after the first depends on up to `fan`
    earlier ones (so some ranks are wide)."""
    nodes = []
    for i in range(size):
        deps = [f"step{j}" for j in range(max(i - fan, 0), i)] if i else []
        if i % 7 == 3:
            deps = deps[:1] if deps else []
        nodes.append({"id": f"step{i}", "type": "transform", "output": i, "depends_on": deps})
    return {"nodes": nodes}


def recorded_run(
    workflow: Any,
    actor: Any,
    timeline: list[tuple[str, list[tuple[float, float, float, str]]]],
    *,
    status: str = "succeeded",
    start: datetime | None = None,
) -> Run:
    """A finished run whose events say, per node, when each attempt was queued, started and
    ended (seconds after `start`) and how it ended (`failed` attempts are followed by a retry).
    """
    start = start or timezone.now() - timedelta(minutes=10)
    end = start + timedelta(seconds=max(a[2] for _, attempts in timeline for a in attempts))
    run = Run.objects.create(
        project=workflow.project,
        workflow=workflow,
        version=workflow.current_version,
        status=status,
        input={},
        created_by=actor,
        queued_at=start,
        started_at=start,
        finished_at=end,
        duration_ms=int((end - start).total_seconds() * 1000),
    )
    rows: list[tuple[float, dict[str, Any]]] = [(0, {"type": "run.status", "status": "pending"})]
    for node_id, attempts in timeline:
        last = attempts[-1]
        RunStep.objects.create(
            run=run,
            node_id=node_id,
            type="transform",
            status=last[3],
            attempt=len(attempts),
            failures=sum(1 for a in attempts if a[3] == "failed"),
            queued_at=start + timedelta(seconds=last[0]),
            started_at=start + timedelta(seconds=last[1]),
            finished_at=start + timedelta(seconds=last[2]),
        )
        for number, (queued, began, ended, outcome) in enumerate(attempts, start=1):
            if number == 1:
                rows.append((queued, _step(node_id, number, "queued")))
            rows.append((began, _step(node_id, number, "running")))
            if outcome == "failed" and number < len(attempts):
                rows.append(
                    (
                        ended,
                        _step(
                            node_id,
                            number,
                            "queued",
                            retry=True,
                            error={"type": "tool_error", "message": "HTTP 503 from upstream"},
                            delay_seconds=round(attempts[number][0] - ended, 3),
                        ),
                    )
                )
            else:
                rows.append((ended, _step(node_id, number, outcome)))
    rows.append(
        (max(a[2] for _, at in timeline for a in at), {"type": "run.status", "status": status})
    )
    rows.sort(key=lambda row: row[0])
    events = RunEvent.objects.bulk_create(
        RunEvent(
            run=run,
            seq=seq,
            type=data.pop("type"),
            node_id=data.pop("node_id", ""),
            attempt=data.pop("attempt", None),
            payload=data,
        )
        for seq, (_, data) in enumerate(rows, start=1)
    )
    Run.objects.filter(pk=run.pk).update(event_seq=len(events), created_at=start)
    for event, (offset, _) in zip(events, rows, strict=True):
        # auto_now_add stamped "now": move each event to its place on the timeline.
        RunEvent.objects.filter(pk=event.pk).update(created_at=start + timedelta(seconds=offset))
    run.refresh_from_db()
    return run


def _step(node_id: str, attempt: int, status: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": "step.status",
        "node_id": node_id,
        "attempt": attempt,
        "status": status,
        **payload,
    }
