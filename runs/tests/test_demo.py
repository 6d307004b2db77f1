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
