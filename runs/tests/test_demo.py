"""The demo workflow seeded by `seed_demo` runs to completion with no API key."""

import io

import pytest
from django.core.management import call_command

from runs.models import RunEvent
from sparkops.testing.engine import wait_for_run
from workflows.models import Workflow

pytestmark = pytest.mark.usefixtures("engine")


def test_demo_workflow_runs_to_completion_through_the_api():
    from conftest import client_for

    call_command("seed_demo", stdout=io.StringIO())
    workflow = Workflow.objects.get(slug="research-and-summarize")
    client = client_for(workflow.created_by)
    response = client.post(
        f"/api/v1/workflows/{workflow.pk}/run", {"input": {"topic": "bees"}}, format="json"
    )
    assert response.status_code == 201, response.json()
    run = wait_for_run(response.json()["id"])
    assert run.status == "succeeded", run.error
    assert run.output == {
        "summary": {
            "topic": "bees",
            "finding": 'Checked with the calculator: {"result": 42}',
            "check": 42,
        }
    }
    assert RunEvent.objects.filter(run=run, type="llm.call").count() == 2
    # one inside the agent loop, one for the tool step
    assert RunEvent.objects.filter(run=run, type="tool.call").count() == 2
    assert run.input_tokens > 0


def test_the_demo_map_workflow_runs_one_step_per_item_through_the_api():
    from conftest import client_for

    call_command("seed_demo", stdout=io.StringIO())
    workflow = Workflow.objects.get(slug="calculate-each")
    client = client_for(workflow.created_by)
    response = client.post(f"/api/v1/workflows/{workflow.pk}/run", {"input": {}}, format="json")
    assert response.status_code == 201, response.json()
    run = wait_for_run(response.json()["id"])
    assert run.status == "succeeded", run.error
    assert run.output == {"results": [2, 42, 1024, 3], "total": 1071}
    steps = client.get(f"/api/v1/runs/{run.pk}/steps").json()
    items = [
        (s["node_id"], s["item_index"], s["status"]) for s in steps if s["item_index"] is not None
    ]
    assert sorted(items) == [(f"calculate[{i}]", i, "succeeded") for i in range(4)]
    assert RunEvent.objects.filter(run=run, type="tool.call", node_id="calculate[3]").count() == 1


def test_the_readme_workflow_example_runs_the_demo_workflow_as_a_child():
    import json
    from pathlib import Path

    from conftest import client_for

    call_command("seed_demo", stdout=io.StringIO())
    demo = Workflow.objects.get(slug="research-and-summarize")
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- example: workflow -->\n```json\n", 1)[1].split("```", 1)[0]
    client = client_for(demo.created_by)
    response = client.post(
        "/api/v1/workflows/",
        {"project": str(demo.project_id), "name": "Report", "definition": json.loads(block)},
        format="json",
    )
    assert response.status_code == 201, response.json()
    report = response.json()
    response = client.post(
        f"/api/v1/workflows/{report['id']}/run", {"input": {"topic": "bees"}}, format="json"
    )
    run = wait_for_run(response.json()["id"])
    assert run.status == "succeeded", run.error
    finding = 'Checked with the calculator: {"result": 42}'
    assert run.output["report"] == {"topic": "bees", "finding": finding}
    assert run.input_tokens > 0  # the child's model calls, rolled up
