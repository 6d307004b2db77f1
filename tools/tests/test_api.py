from __future__ import annotations

import json
from typing import Any

import pytest

from accounts.tests.factories import UserFactory
from conftest import client_for
from projects import services as project_services
from tools import services
from tools.models import Tool
from tools.tests.factories import ToolFactory
from tools.tests.server import ToolServer

pytestmark = pytest.mark.django_db

URL = "/api/v1/tools/"
CALC = {"function": "calculator"}


def detail(tool: Tool, suffix: str = "") -> str:
    return f"{URL}{tool.pk}/{suffix}"


def payload(cast: Any, **fields: Any) -> dict[str, Any]:
    return {
        "project": str(cast.project.pk),
        "name": "calc",
        "kind": "builtin",
        "config": CALC,
        **fields,
    }


# --- create ----------------------------------------------------------------------------------


def test_developer_creates_a_tool(cast):
    response = cast.client("developer").post(URL, payload(cast), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["project"] == str(cast.project.pk)
    assert body["is_global"] is False
    assert body["version"] == 1
    assert body["status"] == "active"
    assert body["created_by"] == str(cast.developer.pk)
    assert body["parameters"]["required"] == ["expression"]
    assert Tool.objects.get(pk=body["id"]).versions.count() == 1


def test_viewer_cannot_create(cast):
    response = cast.client("viewer").post(URL, payload(cast), format="json")
    assert response.status_code == 403
    assert not Tool.objects.exists()


def test_outsider_cannot_create_in_a_project_they_do_not_belong_to(cast):
    response = cast.client("outsider").post(URL, payload(cast), format="json")
    assert response.status_code == 400
    assert "project" in response.json()["errors"]


def test_invalid_tool_is_a_field_level_400(cast):
    body = payload(
        cast,
        name="bad name",
        kind="http",
        config={"method": "GET", "url": "https://x.example/{{ args.q", "auth": {"type": "x"}},
        parameters={"type": "array"},
    )
    response = cast.client("developer").post(URL, body, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {
        "name",
        "config.url",
        "config.auth.type",
        "parameters.type",
        "parameters.properties",
    }
    assert response.json()["type"] == "validation_error"


def test_duplicate_name_is_409(cast):
    client = cast.client("developer")
    assert client.post(URL, payload(cast), format="json").status_code == 201
    response = client.post(URL, payload(cast), format="json")
    assert response.status_code == 409
    assert response.json()["errors"] == {"name": ["A tool with this name already exists."]}


def test_create_needs_a_project_or_is_global(cast):
    body = payload(cast)
    del body["project"]
    response = cast.client("developer").post(URL, body, format="json")
    assert response.status_code == 400
    assert "project" in response.json()["errors"]


# --- read, filter, search --------------------------------------------------------------------


def test_list_shows_my_projects_tools_and_global_ones(cast):
    mine = ToolFactory(project=cast.project, name="mine")
    ToolFactory(project=cast.other_project, name="theirs")
    shared = ToolFactory(project=None, is_global=True, name="shared")
    response = cast.client("viewer").get(URL)
    assert response.status_code == 200
    assert [t["name"] for t in response.json()["results"]] == ["mine", "shared"]
    assert {t["id"] for t in response.json()["results"]} == {mine.pk, shared.pk}


def test_filters_search_and_ordering(cast):
    ToolFactory(project=cast.project, name="alpha", description="Finds weather")
    ToolFactory(
        project=cast.project,
        name="beta",
        kind="http",
        config={"method": "GET", "url": "https://api.example.com/x"},
        status="disabled",
    )
    ToolFactory(project=None, is_global=True, name="gamma")
    client = cast.client("developer")

    def names(query: str) -> list[str]:
        response = client.get(URL + query)
        assert response.status_code == 200, response.json()
        return [t["name"] for t in response.json()["results"]]

    assert names("?kind=http") == ["beta"]
    assert names("?status=disabled") == ["beta"]
    assert names("?is_global=true") == ["gamma"]
    assert names(f"?project={cast.project.pk}") == ["alpha", "beta"]
    assert names("?search=weather") == ["alpha"]
    assert names("?ordering=-name") == ["gamma", "beta", "alpha"]
    assert names("?page_size=1") == ["alpha"]
    assert client.get(URL + "?page_size=1").json()["count"] == 3


def test_outsider_gets_404_for_a_project_tool(cast):
    tool = ToolFactory(project=cast.project)
    assert cast.client("outsider").get(detail(tool)).status_code == 404
    assert cast.client("viewer").get(detail(tool)).status_code == 200


def test_malformed_ids_are_404(cast):
    client = cast.client("developer")
    assert client.get(URL + "abc/").json() == {"type": "not_found", "detail": "Not found."}
    assert client.post(URL + "abc/invoke/", {}, format="json").status_code == 404


def test_routes_work_without_trailing_slash(cast):
    tool = ToolFactory(project=cast.project)
    client = cast.client("viewer")
    assert client.get("/api/v1/tools").status_code == 200
    assert client.get(f"/api/v1/tools/{tool.pk}").status_code == 200
    assert client.get(f"/api/v1/tools/{tool.pk}/versions").status_code == 200


# --- update, versions, rollback, delete ------------------------------------------------------


def test_update_versions_and_rollback(cast):
    tool = ToolFactory(project=cast.project, description="one")
    client = cast.client("developer")
    response = client.patch(detail(tool), {"description": "two"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["version"] == 2
    # a PATCH that changes nothing is not a version
    assert client.patch(detail(tool), {"description": "two"}, format="json").json()["version"] == 2

    versions = client.get(detail(tool, "versions/")).json()
    assert versions["count"] == 2
    assert [v["number"] for v in versions["results"]] == [2, 1]
    one = client.get(detail(tool, "versions/1/"))
    assert one.status_code == 200
    assert one.json()["snapshot"]["description"] == "one"
    assert client.get(detail(tool, "versions/9/")).status_code == 404

    response = client.post(detail(tool, "rollback/"), {"version": 1}, format="json")
    assert response.status_code == 200, response.json()
    assert (response.json()["version"], response.json()["description"]) == (3, "one")
    bad = client.post(detail(tool, "rollback/"), {"version": 7}, format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"] == {"version": ["This tool has no version 7."]}


def test_update_cannot_move_a_tool(cast):
    tool = ToolFactory(project=cast.project)
    response = cast.client("owner").patch(
        detail(tool), {"project": str(cast.other_project.pk), "is_global": True}, format="json"
    )
    assert response.status_code == 200
    tool.refresh_from_db()
    assert (tool.project, tool.is_global) == (cast.project, False)


def test_put_replaces_the_tool(cast):
    tool = ToolFactory(project=cast.project)
    body = {
        "name": "fetch",
        "kind": "http",
        "config": {"method": "get", "url": "https://api.example.com/{{ args.id }}"},
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        "description": "Fetch",
        "status": "active",
    }
    response = cast.client("developer").put(detail(tool), body, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["config"]["method"] == "GET"
    assert response.json()["kind"] == "http"


def test_viewer_cannot_change_or_delete(cast):
    tool = ToolFactory(project=cast.project)
    client = cast.client("viewer")
    assert client.patch(detail(tool), {"description": "x"}, format="json").status_code == 403
    assert client.delete(detail(tool)).status_code == 403
    assert client.post(detail(tool, "rollback/"), {"version": 1}, format="json").status_code == 403


def test_developer_deletes(cast):
    tool = ToolFactory(project=cast.project)
    assert cast.client("developer").delete(detail(tool)).status_code == 204
    assert not Tool.objects.exists()


# --- global tools ----------------------------------------------------------------------------


def test_staff_create_global_tools_and_others_cannot(cast):
    staff = UserFactory(is_staff=True)
    body = {
        "is_global": True,
        "name": "clock",
        "kind": "builtin",
        "config": {"function": "current_time"},
    }
    refused = cast.client("owner").post(URL, body, format="json")
    assert refused.status_code == 403
    assert refused.json()["type"] == "permission_denied"
    response = client_for(staff).post(URL, body, format="json")
    assert response.status_code == 201, response.json()
    assert (response.json()["project"], response.json()["is_global"]) == (None, True)


def test_global_tools_read_by_all_written_by_staff(cast):
    tool = ToolFactory(project=None, is_global=True)
    staff = UserFactory(is_staff=True)
    for who in ("outsider", "viewer", "owner"):
        client = cast.client(who)
        assert client.get(detail(tool)).status_code == 200
        assert client.get(detail(tool, "versions/")).status_code == 200
        assert client.get(detail(tool, "versions/1/")).status_code == 200
        # visible, so a refused write is 403 (not 404)
        assert client.patch(detail(tool), {"description": "x"}, format="json").status_code == 403
        assert client.delete(detail(tool)).status_code == 403
        assert (
            client.post(detail(tool, "rollback/"), {"version": 1}, format="json").status_code == 403
        )
    staff_client = client_for(staff)
    assert staff_client.patch(detail(tool), {"description": "y"}, format="json").status_code == 200
    assert staff_client.delete(detail(tool)).status_code == 204


# --- invoke ----------------------------------------------------------------------------------


def test_invoke_happy_path(cast):
    tool = ToolFactory(project=cast.project, config=CALC)
    response = cast.client("developer").post(
        detail(tool, "invoke/"), {"arguments": {"expression": "(1 + 2) * 7"}}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["ok"] is True
    assert body["status"] == "succeeded"
    assert body["output"] == {"result": 21}
    assert body["http_status"] is None
    assert body["error"] is None
    assert body["latency_ms"] >= 0


def test_invoke_failure_is_200_with_ok_false(cast):
    tool = ToolFactory(project=cast.project, config=CALC)
    response = cast.client("developer").post(
        detail(tool, "invoke/"), {"arguments": {"expression": "__import__('os')"}}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["ok"], response.json()["status"]) == (False, "failed")
    assert "not allowed" in response.json()["error"]


def test_invoke_400_lists_each_violation(cast):
    tool = ToolFactory(
        project=cast.project,
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    )
    response = cast.client("developer").post(
        detail(tool, "invoke/"), {"arguments": {"days": 0, "extra": True}}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == "Invalid tool arguments."
    assert body["errors"] == {
        "arguments.city": ["This field is required."],
        "arguments.days": ["0 is less than the minimum of 1"],
        "arguments.extra": ["Unknown field."],
    }
    not_an_object = cast.client("developer").post(
        detail(tool, "invoke/"), {"arguments": [1, 2]}, format="json"
    )
    assert not_an_object.status_code == 400
    assert not_an_object.json()["errors"] == {"arguments": ["Must be a JSON object (got array)."]}


def test_viewer_cannot_invoke(cast):
    tool = ToolFactory(project=cast.project)
    response = cast.client("viewer").post(detail(tool, "invoke/"), {}, format="json")
    assert response.status_code == 403


def test_invoke_a_disabled_tool_is_409(cast):
    tool = ToolFactory(project=cast.project, status="disabled")
    response = cast.client("developer").post(detail(tool, "invoke/"), {}, format="json")
    assert response.status_code == 409


def test_invoke_a_global_tool_with_one_of_my_projects(cast):
    tool = ToolFactory(project=None, is_global=True)
    url = detail(tool, "invoke/")
    developer = cast.client("developer")
    missing = developer.post(url, {"arguments": {"a": 1}}, format="json")
    assert missing.status_code == 400
    assert "project" in missing.json()["errors"]
    ok = developer.post(
        url, {"arguments": {"a": 1}, "project": str(cast.project.pk)}, format="json"
    )
    assert ok.status_code == 200, ok.json()
    assert ok.json()["output"] == {"a": 1}
    viewer = cast.client("viewer").post(url, {"project": str(cast.project.pk)}, format="json")
    assert viewer.status_code == 403
    # a project the caller is not in does not exist for them
    foreign = developer.post(url, {"project": str(cast.other_project.pk)}, format="json")
    assert foreign.status_code == 400


def test_invoke_http_tool_with_secret_and_idempotency_key(cast, server: ToolServer):
    project_services.secret_set(
        project=cast.project, actor=cast.owner, name="API_TOKEN", value="s3cr3t-value"
    )
    tool = ToolFactory(
        project=cast.project,
        kind="http",
        config={
            "method": "POST",
            "url": server.url + "/echo",
            "auth": {"type": "bearer", "secret": "API_TOKEN"},
            "body": "{{ args }}",
        },
    )
    response = cast.client("developer").post(
        detail(tool, "invoke/"),
        {"arguments": {"x": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="abc-123",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["ok"] is True
    assert body["http_status"] == 200
    assert body["output"]["json"] == {"x": 1}
    assert body["output"]["headers"]["authorization"] == "Bearer ***"
    assert "s3cr3t-value" not in json.dumps(body)
    (seen,) = server.requests
    assert seen.headers["authorization"] == "Bearer s3cr3t-value"
    assert seen.headers["x-idempotency-key"] == "abc-123"


# --- query counts ----------------------------------------------------------------------------


def test_tool_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    ToolFactory(project=cast.project)
    # auth user, count, page of tools (scoped by a membership subquery, project joined)
    with django_assert_num_queries(3):
        assert client.get(URL).status_code == 200
    for _ in range(10):
        ToolFactory(project=cast.project)
    ToolFactory(project=None, is_global=True)
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 12


def test_version_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    tool = ToolFactory(project=cast.project)
    url = detail(tool, "versions/")
    # auth user, the tool (project joined), the caller's role, count, page of versions
    with django_assert_num_queries(5):
        assert client.get(url).status_code == 200
    for i in range(10):
        services.tool_update(tool=tool, actor=cast.owner, description=f"v{i}")
    with django_assert_num_queries(5):
        assert client.get(url).json()["count"] == 11


def test_diff_shows_each_changed_field_before_and_after(cast):
    tool = ToolFactory(project=cast.project, description="one")
    client = cast.client("developer")
    client.patch(detail(tool), {"description": "two"}, format="json")
    body = cast.client("viewer").get(detail(tool, "diff/")).json()
    assert (body["from_version"], body["to_version"]) == (1, 2)
    assert body["changed_fields"] == ["description"]
    assert body["changes"] == {"description": {"from": "one", "to": "two"}}
    unknown = cast.client("viewer").get(detail(tool, "diff/"), {"from": 5})
    assert unknown.status_code == 400
    assert unknown.json()["errors"] == {"from": ["No version 5; the latest is 2."]}
