from __future__ import annotations

from typing import Any

import pytest

from conftest import client_for
from projects.tests.factories import MembershipFactory, ProjectFactory
from workflows import services
from workflows.models import Workflow
from workflows.tests.factories import WorkflowFactory, transform_definition
from workflows.tests.test_services import agent_then_tool, make_agent, make_tool

pytestmark = pytest.mark.django_db

URL = "/api/v1/workflows/"


def detail(workflow: Workflow, suffix: str = "") -> str:
    return f"{URL}{workflow.pk}/{suffix}"


def body(cast: Any, **fields: Any) -> dict[str, Any]:
    return {
        "project": str(cast.project.pk),
        "name": "Digest",
        "definition": transform_definition(),
        **fields,
    }


def assert_definition_error(response: Any, key: str, words: str) -> None:
    assert response.status_code == 400, response.content
    payload = response.json()
    assert payload["type"] == "validation_error"
    assert payload["detail"] == "Invalid workflow definition."
    assert key in payload["errors"], payload["errors"]
    assert any(words in message for message in payload["errors"][key]), payload["errors"]


# --- CRUD ------------------------------------------------------------------------------------


def test_developer_creates_a_workflow(cast):
    response = cast.client("developer").post(URL, body(cast, retry_policy={"max_attempts": 2}))
    assert response.status_code == 201, response.json()
    payload = response.json()
    assert payload["slug"] == "digest"
    assert payload["project"] == str(cast.project.pk)
    assert payload["version"] == 1
    assert payload["status"] == "active"
    assert payload["created_by"] == str(cast.developer.pk)
    assert payload["retry_policy"] == {
        "max_attempts": 2,
        "backoff_seconds": 2,
        "max_backoff_seconds": 300,
    }
    assert Workflow.objects.get(pk=payload["id"]).versions.count() == 1


def test_viewer_cannot_create(cast):
    response = cast.client("viewer").post(URL, body(cast))
    assert response.status_code == 403
    assert not Workflow.objects.exists()


def test_outsider_cannot_create_in_a_project_they_are_not_in(cast):
    response = cast.client("outsider").post(URL, body(cast))
    assert response.status_code == 400
    assert "project" in response.json()["errors"]


def test_shape_errors_are_400(cast):
    response = cast.client("developer").post(
        URL, body(cast, definition=[1], triggers="daily", retry_policy=3)
    )
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"definition", "triggers", "retry_policy"}


def test_duplicate_slug_is_409(cast):
    WorkflowFactory(project=cast.project, name="Digest")
    response = cast.client("developer").post(URL, body(cast, slug="digest"))
    assert response.status_code == 409
    assert response.json()["errors"] == {"slug": ["Taken."]}


def test_project_is_read_only_after_create(cast):
    workflow = WorkflowFactory(project=cast.project)
    MembershipFactory(project=cast.other_project, user=cast.developer, role="owner")
    response = cast.client("developer").patch(
        detail(workflow), {"project": str(cast.other_project.pk), "name": "Moved?"}
    )
    assert response.status_code == 200
    assert response.json()["project"] == str(cast.project.pk)
    assert response.json()["name"] == "Moved?"


def test_update_writes_a_version_only_when_the_definition_changes(cast):
    workflow = WorkflowFactory(project=cast.project)
    client = cast.client("developer")
    assert client.patch(detail(workflow), {"description": "d"}).json()["version"] == 1
    response = client.patch(detail(workflow), {"definition": transform_definition("other")})
    assert response.json()["version"] == 2
    response = client.put(
        detail(workflow),
        {"name": workflow.name, "definition": transform_definition("other"), "timeout_seconds": 9},
    )
    assert response.status_code == 200, response.json()
    assert response.json()["version"] == 3


def test_viewer_reads_but_cannot_change_or_delete(cast):
    workflow = WorkflowFactory(project=cast.project)
    client = cast.client("viewer")
    assert client.get(detail(workflow)).status_code == 200
    assert client.patch(detail(workflow), {"name": "x"}).status_code == 403
    assert client.delete(detail(workflow)).status_code == 403


def test_developer_deletes(cast):
    workflow = WorkflowFactory(project=cast.project)
    assert cast.client("developer").delete(detail(workflow)).status_code == 204
    assert not Workflow.objects.exists()


def test_outsider_gets_404(cast):
    workflow = WorkflowFactory(project=cast.project)
    client = cast.client("outsider")
    assert client.get(detail(workflow)).status_code == 404
    assert client.get(URL).json()["count"] == 0


def test_list_filters_search_ordering_and_pagination(cast):
    WorkflowFactory(project=cast.project, name="Alpha", description="sends the newsletter")
    paused = WorkflowFactory(project=cast.project, name="Beta")
    services.workflow_set_status(workflow=paused, actor=cast.owner, status="paused")
    WorkflowFactory(project=cast.other_project, name="Hidden")
    second = ProjectFactory(name="Second")
    MembershipFactory(project=second, user=cast.viewer)
    WorkflowFactory(project=second, name="Gamma")

    client = cast.client("viewer")
    payload = client.get(URL).json()
    assert [w["name"] for w in payload["results"]] == ["Alpha", "Beta", "Gamma"]
    assert client.get(URL, {"project": str(second.pk)}).json()["count"] == 1
    assert [w["name"] for w in client.get(URL, {"status": "paused"}).json()["results"]] == ["Beta"]
    assert client.get(URL, {"search": "newsletter"}).json()["count"] == 1
    names = [w["name"] for w in client.get(URL, {"ordering": "-name"}).json()["results"]]
    assert names == ["Gamma", "Beta", "Alpha"]
    page = client.get(URL, {"page_size": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert client.get("/api/v1/workflows").status_code == 200  # no trailing slash


# --- validation refusals through the API (one per kind) --------------------------------------


def test_agent_from_another_project_is_refused(cast):
    make_agent(cast.other_project, slug="researcher")
    make_tool(cast.project)
    response = cast.client("developer").post(URL, body(cast, definition=agent_then_tool()))
    assert_definition_error(response, "definition.nodes[0].agent", "Unknown agent 'researcher'")


def test_disabled_tool_is_refused(cast):
    make_agent(cast.project)
    make_tool(cast.project, status="disabled")
    response = cast.client("developer").post(URL, body(cast, definition=agent_then_tool()))
    assert_definition_error(response, "definition.nodes[1].tool", "Unknown tool 'noop'")


def test_cycle_is_refused(cast):
    definition = {
        "nodes": [
            {"id": "a", "type": "transform", "output": 1, "depends_on": ["b"]},
            {"id": "b", "type": "transform", "output": 2, "depends_on": ["a"]},
        ]
    }
    response = cast.client("developer").post(URL, body(cast, definition=definition))
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert any(
        key.startswith("definition.nodes[") and key.endswith("].depends_on") for key in errors
    )
    assert "Dependency cycle" in str(errors)


def test_unknown_depends_on_is_refused(cast):
    definition = transform_definition()
    definition["nodes"][0]["depends_on"] = ["nowhere"]
    response = cast.client("developer").post(URL, body(cast, definition=definition))
    assert_definition_error(response, "definition.nodes[0].depends_on", "Unknown node 'nowhere'")


def test_template_reference_to_a_step_that_is_not_upstream_is_refused(cast):
    definition = {
        "nodes": [
            {"id": "a", "type": "transform", "output": {"n": 1}},
            {"id": "b", "type": "transform", "output": {"copy": "{{ steps.a.output.n }}"}},
        ]
    }
    response = cast.client("developer").post(URL, body(cast, definition=definition))
    assert_definition_error(response, "definition.nodes[1].output.copy", "not upstream of 'b'")
    definition["nodes"][1]["depends_on"] = ["a"]
    response = cast.client("developer").post(URL, body(cast, definition=definition))
    assert response.status_code == 201


def test_bad_input_schema_is_refused(cast):
    definition = transform_definition()
    definition["input_schema"] = {"type": "objekt"}
    response = cast.client("developer").post(URL, body(cast, definition=definition))
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [key for key in errors if key.startswith("definition.input_schema")], errors
    assert "Not a valid JSON Schema" in str(errors)


def test_invalid_update_is_refused_and_changes_nothing(cast):
    workflow = WorkflowFactory(project=cast.project)
    definition = transform_definition()
    definition["nodes"][0]["type"] = "shell"
    response = cast.client("developer").patch(detail(workflow), {"definition": definition})
    assert_definition_error(response, "definition.nodes[0].type", "Unknown node type 'shell'")
    workflow.refresh_from_db()
    assert workflow.version == 1 and workflow.definition == transform_definition()


# --- validate (dry run) ----------------------------------------------------------------------

VALIDATE = f"{URL}validate"


def test_validate_is_a_dry_run_any_member_may_use(cast):
    response = cast.client("viewer").post(
        VALIDATE, {"project": str(cast.project.pk), "definition": transform_definition()}
    )
    assert response.status_code == 200, response.json()
    assert response.json()["valid"] is True
    assert response.json()["graph"]["layers"] == [["greet"]]
    assert not Workflow.objects.exists()
    assert cast.client("viewer").post(f"{VALIDATE}/", {}).status_code == 400  # trailing slash


def test_validate_reports_errors_like_a_save(cast):
    definition = transform_definition()
    definition["nodes"][0]["depends_on"] = ["ghost"]
    response = cast.client("viewer").post(
        VALIDATE, {"project": str(cast.project.pk), "definition": definition}
    )
    assert_definition_error(response, "definition.nodes[0].depends_on", "Unknown node 'ghost'")


def test_validate_needs_membership_of_the_project(cast):
    response = cast.client("outsider").post(
        VALIDATE, {"project": str(cast.project.pk), "definition": transform_definition()}
    )
    assert response.status_code == 400
    assert "project" in response.json()["errors"]


# --- versions, diff, rollback, graph, status -------------------------------------------------


def _with_three_versions(cast: Any) -> Workflow:
    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    services.workflow_update(
        workflow=workflow, actor=cast.developer, definition=transform_definition("second")
    )
    services.workflow_update(workflow=workflow, actor=cast.developer, timeout_seconds=60)
    return workflow


def test_versions_list_and_detail(cast):
    workflow = _with_three_versions(cast)
    client = cast.client("viewer")
    payload = client.get(detail(workflow, "versions/")).json()
    assert payload["count"] == 3
    assert [v["number"] for v in payload["results"]] == [3, 2, 1]
    assert payload["results"][0]["created_by"] == str(cast.developer.pk)
    one = client.get(detail(workflow, "versions/1/")).json()
    assert one["snapshot"]["definition"] == transform_definition()
    assert set(one["snapshot"]) == {"definition", "timeout_seconds", "retry_policy"}
    missing = client.get(detail(workflow, "versions/9"))
    assert missing.status_code == 404
    assert missing.json()["type"] == "not_found"


def test_diff_endpoint(cast):
    workflow = _with_three_versions(cast)
    client = cast.client("viewer")
    payload = client.get(detail(workflow, "diff"), {"from": 1, "to": 3}).json()
    assert payload["nodes"] == {"added": ["second"], "removed": ["greet"], "changed": []}
    assert payload["changed_keys"] == ["output"]
    assert payload["changed_settings"] == ["timeout_seconds"]
    default = client.get(detail(workflow, "diff")).json()  # previous -> current
    assert (default["from_version"], default["to_version"]) == (2, 3)
    bad = client.get(detail(workflow, "diff"), {"from": "x", "to": 7})
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"from"}
    unknown = client.get(detail(workflow, "diff"), {"from": 1, "to": 7})
    assert unknown.status_code == 400
    assert set(unknown.json()["errors"]) == {"to"}


def test_rollback_endpoint(cast):
    workflow = _with_three_versions(cast)
    assert (
        cast.client("viewer").post(detail(workflow, "rollback"), {"version": 1}).status_code == 403
    )
    response = cast.client("developer").post(detail(workflow, "rollback"), {"version": 1})
    assert response.status_code == 200, response.json()
    assert response.json()["version"] == 4
    assert response.json()["definition"] == transform_definition()
    assert response.json()["timeout_seconds"] == 3600
    response = cast.client("developer").post(detail(workflow, "rollback"), {"version": 99})
    assert response.status_code == 400
    assert "version" in response.json()["errors"]
    assert cast.client("developer").post(detail(workflow, "rollback"), {}).status_code == 400


def test_graph_endpoint(cast):
    make_agent(cast.project)
    make_tool(cast.project)
    workflow = WorkflowFactory(project=cast.project, definition=agent_then_tool())
    services.workflow_update(workflow=workflow, actor=cast.owner, definition=transform_definition())
    client = cast.client("viewer")
    current = client.get(detail(workflow, "graph")).json()
    assert current["layers"] == [["greet"]]
    assert current["nodes"][0]["id"] == "greet" and current["edges"] == []
    old = client.get(detail(workflow, "graph"), {"version": 1}).json()
    assert old["layers"] == [["research"], ["save"]]
    assert old["edges"] == [{"source": "research", "target": "save", "conditional": False}]
    assert [n["type"] for n in old["nodes"]] == ["agent", "tool"]
    assert client.get(detail(workflow, "graph"), {"version": 5}).status_code == 404


def test_pause_and_activate(cast):
    agent = make_agent(cast.project)
    make_tool(cast.project)
    workflow = WorkflowFactory(project=cast.project, definition=agent_then_tool())
    assert cast.client("viewer").post(detail(workflow, "pause")).status_code == 403
    client = cast.client("developer")
    response = client.post(detail(workflow, "pause"))
    assert response.status_code == 200 and response.json()["status"] == "paused"
    agent.status = "disabled"
    agent.save(update_fields=["status"])
    response = client.post(detail(workflow, "activate"))
    assert_definition_error(response, "definition.nodes[0].agent", "Unknown agent")
    agent.status = "active"
    agent.save(update_fields=["status"])
    response = client.post(detail(workflow, "activate"))
    assert response.status_code == 200 and response.json()["status"] == "active"


def test_schema_publishes_the_definition_schema(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    definition = schema["components"]["schemas"]["Workflow"]["properties"]["definition"]
    assert definition["required"] == ["nodes"]
    node_types = [
        option["properties"]["type"]["enum"][0]
        for option in definition["properties"]["nodes"]["items"]["oneOf"]
    ]
    assert node_types == [
        *("agent", "tool", "approval", "transform", "switch", "map", "workflow", "loop")
    ]


# --- query counts ----------------------------------------------------------------------------


def test_workflow_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    WorkflowFactory(project=cast.project)
    # auth user, count, page of workflows (project joined; creator is a plain id)
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 1
    for _ in range(10):
        WorkflowFactory(project=cast.project)
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 11


def test_versions_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    workflow = WorkflowFactory(project=cast.project)
    # auth user, workflow with its project (scoped by a membership subquery), role check,
    # count, page of versions
    with django_assert_num_queries(5):
        assert client.get(detail(workflow, "versions/")).json()["count"] == 1
    for i in range(10):
        services.workflow_update(workflow=workflow, actor=cast.owner, timeout_seconds=100 + i)
    with django_assert_num_queries(5):
        assert client.get(detail(workflow, "versions/")).json()["count"] == 11


# --- secrets and tools that pick their own host ----------------------------------------------


def _anywhere_tool(cast: Any) -> None:
    from tools import services as tool_services

    tool_services.tool_create(
        actor=cast.owner,
        project=cast.project,
        name="anywhere",
        kind="http",
        parameters={"type": "object", "properties": {"target": {"type": "string"}}},
        config={"method": "POST", "url": "{{ args.target }}/hook", "body": "{{ args }}"},
    )


def _passes_secret(args: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": [{"id": "send", "type": "tool", "tool": "anywhere", "args": args}]}


@pytest.mark.parametrize(
    "args",
    [
        {"target": "https://example.com", "token": "{{ secrets.API_KEY }}"},
        {"target": "https://example.com", "nested": {"t": "Bearer {{ secrets['API_KEY'] }}"}},
    ],
)
def test_a_secret_cannot_go_to_a_tool_whose_host_comes_from_the_arguments(cast, args):
    _anywhere_tool(cast)
    response = cast.client("developer").post(URL, body(cast, definition=_passes_secret(args)))
    assert_definition_error(response, "definition.nodes[0].args", "could be sent anywhere")
    assert not Workflow.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_secret_to_templated_host_is_refused_on_update_too(cast):
    _anywhere_tool(cast)
    client = cast.client("developer")
    plain = _passes_secret({"target": "https://example.com", "token": "fixed"})
    created = client.post(URL, body(cast, definition=plain))
    assert created.status_code == 201, created.json()
    workflow = Workflow.objects.get(pk=created.json()["id"])
    with_secret = _passes_secret({"target": "https://example.com", "t": "{{ secrets.API_KEY }}"})
    response = client.patch(detail(workflow), {"definition": with_secret}, format="json")
    assert_definition_error(response, "definition.nodes[0].args", "could be sent anywhere")
    workflow.refresh_from_db()
    assert workflow.versions.count() == 1
