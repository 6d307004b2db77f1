"""Creates the demo user and the demo project with a simulated agent, a builtin tool, a
three-node workflow that runs to completion with no API key and a `map` workflow.
Idempotent: a second run creates nothing new."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import User
from agents import services as agent_services
from agents.models import Agent
from projects import services as project_services
from projects.models import Project
from tools import services as tool_services
from tools.models import Tool
from workflows import services as workflow_services
from workflows.models import Workflow

DEMO_EMAIL = "demo@sparkops.local"
DEMO_PROJECT_SLUG = "demo"

DEMO_WORKFLOW = {
    "input_schema": {
        "type": "object",
        "properties": {
            "topic": {"type": "string", "minLength": 1},
            "expression": {"type": "string"},
        },
        "required": ["topic"],
    },
    "nodes": [
        {
            "id": "research",
            "type": "agent",
            "agent": "researcher",
            "prompt": "Research {{ input.topic }}; check {{ input.expression | default('6*7') }}.",
            "retry": {"max_attempts": 3, "backoff_seconds": 1},
        },
        {
            "id": "measure",
            "type": "tool",
            "tool": "calculator",
            "args": {"expression": "{{ input.expression | default('2*21') }}"},
        },
        {
            "id": "summarize",
            "type": "transform",
            "depends_on": ["research", "measure"],
            "output": {
                "topic": "{{ input.topic }}",
                "finding": "{{ steps.research.output.text }}",
                "check": "{{ steps.measure.output.result }}",
            },
        },
    ],
    "output": {"summary": "{{ steps.summarize.output }}"},
}


# A `map`: the calculator once per expression, three at a time, outputs in input order.
MAP_WORKFLOW = {
    "input_schema": {
        "type": "object",
        "properties": {"expressions": {"type": "array", "items": {"type": "string"}}},
    },
    "nodes": [
        {
            "id": "calculate",
            "type": "map",
            "description": "The calculator on each expression",
            "items": "{{ input.expressions | default(['1+1', '6*7', '2**10', '9/3']) }}",
            "node": {"type": "tool", "tool": "calculator", "args": {"expression": "{{ item }}"}},
            "max_concurrency": 3,
            "retry": {"max_attempts": 2, "backoff_seconds": 1},
        },
        {
            "id": "total",
            "type": "transform",
            "depends_on": ["calculate"],
            "output": "{{ steps.calculate.output | map(attribute='result') | sum }}",
        },
    ],
    "output": {
        "results": "{{ steps.calculate.output | map(attribute='result') | list }}",
        "total": "{{ steps.total.output }}",
    },
}


# The demo's agents and workflows, each created when its slug is missing (an agent's `tools`
# name the demo's tools).
DEMO_AGENTS: list[dict[str, Any]] = [
    {
        "name": "Researcher",
        "slug": "researcher",
        "provider": "simulated",
        "model": "sim-1",
        "system_prompt": "You research a topic and check numbers with the calculator.",
        "tools": ["calculator"],
        "settings": {
            "mode": "script",
            "turns": [
                {"tool_calls": [{"name": "calculator", "arguments": {"expression": "6*7"}}]},
                {"content": "Checked with the calculator: {last_tool_result}"},
            ],
        },
    },
    {
        # Same behaviour, but on a model with a (steep) price: for budget demos.
        "name": "Priced simulated agent",
        "slug": "priced",
        "provider": "simulated",
        "model": "sim-priced",
        "settings": {"mode": "fixed", "reply": "A paid answer."},
    },
]

DEMO_WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "Paid answer",
        "slug": "paid-answer",
        "description": "One call to a priced simulated model (about $0.009 a run).",
        "definition": {
            "nodes": [{"id": "answer", "type": "agent", "agent": "priced", "prompt": "Hi"}],
            "output": {"answer": "{{ steps.answer.output.text }}"},
        },
    },
    {
        "name": "Research and summarize",
        "slug": "research-and-summarize",
        "description": "An agent calls a tool, a tool runs beside it, a transform joins them.",
        "definition": DEMO_WORKFLOW,
    },
    {
        "name": "Calculate each",
        "slug": "calculate-each",
        "description": "A map: one calculator step per expression of the input list.",
        "definition": MAP_WORKFLOW,
    },
]


class Command(BaseCommand):
    help = "Create the demo user (demo@sparkops.local), project, agent, tool and workflow."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--password",
            default=os.environ.get("SPARKOPS_DEMO_PASSWORD", "sparkops-demo"),
            help="Password for a newly created demo user (env SPARKOPS_DEMO_PASSWORD).",
        )

    @transaction.atomic
    def handle(self, *args: Any, password: str, **options: Any) -> None:
        created = []
        user = User.objects.filter(email=DEMO_EMAIL).first()
        if user is None:
            user = User.objects.create_user(email=DEMO_EMAIL, password=password, name="Demo User")
            created.append(f"user {DEMO_EMAIL}")
        project = Project.objects.filter(slug=DEMO_PROJECT_SLUG).first()
        if project is None:
            project = project_services.project_create(
                actor=user,
                name="Demo",
                slug=DEMO_PROJECT_SLUG,
                description="A demo project with a simulated agent: runs with no API key.",
            )
            created.append(f"project {project.slug}")
        tool = Tool.objects.filter(project=project, name="calculator").first()
        if tool is None:
            tool = tool_services.tool_create(
                actor=user,
                project=project,
                name="calculator",
                kind="builtin",
                description="Evaluates an arithmetic expression.",
                config={"function": "calculator"},
            )
            created.append("tool calculator")
        tools = {tool.name: tool.pk}
        for spec in DEMO_AGENTS:
            if not Agent.objects.filter(project=project, slug=spec["slug"]).exists():
                fields = dict(spec)
                if "tools" in fields:
                    fields["tools"] = [tools[name] for name in fields["tools"]]
                agent_services.agent_create(actor=user, project=project, **fields)
                created.append(f"agent {spec['slug']}")
        for spec in DEMO_WORKFLOWS:
            if not Workflow.objects.filter(project=project, slug=spec["slug"]).exists():
                workflow_services.workflow_create(actor=user, project=project, **spec)
                created.append(f"workflow {spec['slug']}")
        if created:
            self.stdout.write(self.style.SUCCESS(f"Created {', '.join(created)}."))
        else:
            self.stdout.write("Demo data already present; nothing created.")
