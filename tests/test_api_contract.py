"""What the schema fuzzer (`make fuzz`) found, pinned as plain tests: id filters refuse what is
not an id, the schema documents the framework's errors, and errors on the event stream are JSON."""

from __future__ import annotations

import uuid

import pytest

from conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/budgets/?workflow=-3.8e55", "workflow"),
        ("/api/v1/budgets/?agent=1.5", "agent"),
        ("/api/v1/policy-decisions/?policy=3.76e-148", "policy"),
        ("/api/v1/policy-decisions/?budget=99999999999999999999", "budget"),
        ("/api/v1/agents/?tool=1e30", "tool"),
    ],
)
def test_id_filters_answer_400_naming_the_parameter(cast, url, field):
    response = cast.client("owner").get(url)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["type"] == "validation_error" and field in body["errors"]


def test_id_filters_still_filter(cast):
    from agents.tests.factories import AgentFactory
    from tools.tests.factories import ToolFactory

    tool = ToolFactory(project=cast.project, created_by=cast.owner)
    user = AgentFactory(project=cast.project, tools=[tool.pk])
    AgentFactory(project=cast.project)
    response = cast.client("owner").get(f"/api/v1/agents/?tool={tool.pk}")
    assert [a["id"] for a in response.json()["results"]] == [user.pk]


@pytest.mark.parametrize("node_type", [{}, ["agent"], 7])
def test_a_node_type_that_is_not_a_string_is_a_400(cast, node_type):
    definition = {"nodes": [{"id": "a", "type": node_type, "prompt": "x"}]}
    response = cast.client("owner").post(
        "/api/v1/workflows/validate/",
        {"project": str(cast.project.pk), "definition": definition},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "definition.nodes[0].type" in response.json()["errors"]


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_schema_documents_the_framework_errors(schema):
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    assert schema["components"]["schemas"]["Error"]["required"] == ["type", "detail"]
    detail = schema["paths"]["/api/v1/agents/{id}/"]
    assert {"400", "401", "403", "404", "409", "429"} <= set(detail["patch"]["responses"])
    assert detail["get"]["responses"]["404"]["content"] == error
    assert "409" not in detail["get"]["responses"]
    listing = schema["paths"]["/api/v1/agents/"]["get"]
    assert {"400", "401", "403", "404", "429"} <= set(listing["responses"])
    assert all(p["allowEmptyValue"] for p in listing["parameters"] if p["in"] == "query")
    # Cursor-paginated lists answer 404 for a cursor that does not decode.
    assert "404" in schema["paths"]["/api/v1/runs/"]["get"]["responses"]
    # The public webhook receiver authenticates by its token: no 401/403 added there.
    hook = schema["paths"]["/api/v1/hooks/{token}/"]["post"]["responses"]
    assert hook["401"]["description"] == "Missing, bad or stale signature."
    assert "403" not in hook


def test_schema_describes_each_stream_event(schema):
    stream = schema["paths"]["/api/v1/runs/{id}/stream/"]["get"]["responses"]["200"]["content"]
    ref = stream["text/event-stream"]["schema"]["$ref"].rsplit("/", 1)[1]
    event = schema["components"]["schemas"][ref]
    assert set(event["properties"]) == {"id", "event", "data", "retry"}
    assert event["required"] == ["data", "event"]  # the final `end` event carries no id


def test_stream_errors_are_json(cast):
    url = f"/api/v1/runs/{uuid.uuid4()}/stream/?format=sse"
    response = client_for().get(url, HTTP_AUTHORIZATION="Bearer")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json()["type"] == "authentication_failed"
    missing = cast.client("owner").get(url, HTTP_ACCEPT="text/event-stream")
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/json"
    assert missing.json()["type"] == "not_found"
