"""The README's example definitions of `switch`, `map` and `loop` (the `workflow` one runs in
runs/tests/test_demo.py) run to success on a real worker, read from README.md as written:
the agents and tools they name are made here, simulated or on the fake model server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agents import services as agent_services
from conftest import client_for
from projects import services as project_services
from runs.tests.conftest import events_of, http_tool
from sparkops.testing.engine import wait_for_run

pytestmark = pytest.mark.usefixtures("engine")


def readme_example(name: str) -> dict[str, Any]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split(f"<!-- example: {name} -->\n```json\n", 1)[1].split("```", 1)[0]
    return json.loads(block)


def agent(cast: Any, slug: str, **fields: Any) -> None:
    fields.setdefault("provider", "simulated")
    fields.setdefault("model", "sim-1")
    agent_services.agent_create(
        actor=cast.owner, project=cast.project, name=slug.title(), slug=slug, **fields
    )


def run_example(cast: Any, name: str, input: dict[str, Any]) -> Any:
    """Saves the example through the API (as a reader would) and runs it."""
    client = client_for(cast.owner)
    created = client.post(
        "/api/v1/workflows/",
        {"project": str(cast.project.pk), "name": name, "definition": readme_example(name)},
        format="json",
    )
    assert created.status_code == 201, created.json()
    started = client.post(
        f"/api/v1/workflows/{created.json()['id']}/run", {"input": input}, format="json"
    )
    assert started.status_code == 201, started.json()
    return wait_for_run(started.json()["id"])


def test_the_switch_example_routes_the_ticket(cast, tool_server):
    verdict = {"category": "bug", "urgent": False}
    agent(
        cast,
        "triage",
        settings={"mode": "fixed", "reply": json.dumps(verdict)},
        response_format={"type": "object"},
    )
    agent(cast, "engineer", settings={"mode": "fixed", "reply": "Patched."})
    agent(cast, "support")
    http_tool(cast.project, cast.owner, "page-oncall", tool_server.url + "/page")
    run = run_example(cast, "switch", {"ticket": "The export button crashes."})
    assert run.status == "succeeded", run.error
    steps = {step.node_id: step for step in run.steps.all()}
    assert steps["route"].output == {"branch": "fix", "case": 0, "value": "bug"}
    assert steps["fix"].output == {"text": "Patched."}
    assert (steps["escalate"].status, steps["answer"].status) == ("skipped", "skipped")
    assert not tool_server.calls("/page")


def test_the_map_example_summarises_each_document(cast):
    agent(cast, "summarizer")  # echo: answers "Echo: <the prompt>"
    documents = [{"text": "otters"}, {"text": "beavers"}, {"text": "voles"}]
    run = run_example(cast, "map", {"documents": documents})
    assert run.status == "succeeded", run.error
    expected = [f"Echo: Summarise document {i}: {d['text']}" for i, d in enumerate(documents)]
    assert run.steps.get(node_id="summaries").output == [{"text": line} for line in expected]
    assert run.steps.get(node_id="digest").output == "\n".join(expected)
    items = run.steps.filter(item_index__isnull=False).values_list("node_id", "status")
    assert sorted(items) == [(f"summaries[{i}]", "succeeded") for i in range(3)]


def test_the_loop_example_revises_until_the_critic_approves(cast, fake_llm):
    agent(cast, "writer", settings={"mode": "fixed", "reply": "A first draft."})
    project_services.secret_create(project=cast.project, actor=cast.owner, name="k", value="sk-x")
    agent(
        cast,
        "critic",
        provider="openai",
        model="gpt-test-1",
        base_url=fake_llm.openai_base_url,
        credentials_secret="k",
    )
    fake_llm.enqueue("openai", {"content": "A better draft."})
    fake_llm.enqueue("openai", {"content": "The best draft. LGTM"})
    run = run_example(cast, "loop", {"brief": "otters"})
    assert run.status == "succeeded", run.error
    assert run.output == "The best draft. LGTM"
    prompts = [r.body["messages"][-1]["content"] for r in fake_llm.requests_for("openai")]
    assert prompts == ["Improve: A first draft.", "Improve: A better draft."]
    assert run.steps.get(node_id="revise").input == {"iterations": 2}
    assert len(events_of(run, "llm.call")) == 3
