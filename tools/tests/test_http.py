"""HTTP tools against a real local server (tools/tests/server.py), through sparkops.egress."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from projects import files
from projects import services as project_services
from projects.models import File
from projects.secrets import SecretBag
from sparkops.errors import InvalidInput
from tools import services
from tools.models import Tool
from tools.tests.factories import ToolFactory
from tools.tests.server import Reply, ToolServer

pytestmark = pytest.mark.django_db

TOKEN = "tok-3f9a1c-SECRET"
PASSWORD = "p@ss w/rd:+&="


def http_tool(project: Any, config: dict[str, Any], parameters: dict | None = None) -> Tool:
    return ToolFactory(project=project, kind="http", config=config, parameters=parameters or {})


def call(tool: Tool, arguments: dict | None = None, **kwargs: Any) -> services.ToolResult:
    return services.tool_execute(
        tool=tool, arguments=arguments or {}, secrets=SecretBag(tool.project), **kwargs
    )


@pytest.fixture
def project(cast: Any) -> Any:
    for name, value in (("API_TOKEN", TOKEN), ("PASSWORD", PASSWORD), ("USER", "robot")):
        project_services.secret_set(project=cast.project, actor=cast.owner, name=name, value=value)
    return cast.project


ITEM_PARAMS = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "q": {"type": "string"},
        "tag": {"type": "string"},
    },
    "required": ["id"],
}


def test_get_with_templated_path_and_query(server: ToolServer, project: Any):
    tool = http_tool(
        project,
        {
            "method": "GET",
            "url": server.url + "/items/{{ args.id }}",
            "query": {"q": "{{ args.q }}", "limit": 5, "tags": ["a", "{{ args.tag }}"]},
            "headers": {"Accept": "application/json", "X-Item": "item-{{ args.id }}"},
        },
        ITEM_PARAMS,
    )
    result = call(tool, {"id": 42, "q": "red & blue", "tag": "b"})
    assert result.ok, result.error
    assert result.http_status == 200
    (seen,) = server.requests
    assert seen.method == "GET"
    assert seen.path == "/items/42"
    assert seen.query == {"q": ["red & blue"], "limit": ["5"], "tags": ["a", "b"]}
    assert seen.headers["x-item"] == "item-42"
    assert result.output["path"] == "/items/42"  # the JSON response is parsed
    assert result.latency_ms > 0


def test_post_with_json_body_keeps_native_types(server: ToolServer, project: Any):
    tool = http_tool(
        project,
        {
            "method": "POST",
            "url": server.url + "/orders",
            "body": {
                "item": "{{ args.item }}",
                "qty": "{{ args.qty }}",
                "gift": True,
                "note": "for {{ args.item }}",
                "all": "{{ args }}",
            },
        },
        {"type": "object", "properties": {"item": {"type": "string"}, "qty": {"type": "integer"}}},
    )
    result = call(tool, {"item": "tea", "qty": 3})
    assert result.ok, result.error
    (seen,) = server.requests
    assert seen.method == "POST"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json == {
        "item": "tea",
        "qty": 3,
        "gift": True,
        "note": "for tea",
        "all": {"item": "tea", "qty": 3},
    }


def test_text_responses_are_returned_as_text(server: ToolServer, project: Any):
    server.script("/plain", Reply(body="just words"))
    tool = http_tool(project, {"method": "GET", "url": server.url + "/plain"})
    result = call(tool)
    assert result.ok
    assert result.output == "just words"


@pytest.mark.parametrize(
    ("auth", "header", "sent"),
    [
        ({"type": "bearer", "secret": "API_TOKEN"}, "authorization", f"Bearer {TOKEN}"),
        ({"type": "api_key", "secret": "API_TOKEN", "header": "X-Api-Key"}, "x-api-key", TOKEN),
        ({"type": "api_key", "secret": "API_TOKEN"}, "x-api-key", TOKEN),
        (
            {"type": "basic", "username_secret": "USER", "password_secret": "PASSWORD"},
            "authorization",
            "Basic " + base64.b64encode(f"robot:{PASSWORD}".encode()).decode(),
        ),
        (
            {"type": "basic", "username": "bot", "password_secret": "PASSWORD"},
            "authorization",
            "Basic " + base64.b64encode(f"bot:{PASSWORD}".encode()).decode(),
        ),
    ],
)
def test_auth_from_secrets_reaches_the_server_but_never_the_result(
    server: ToolServer, project: Any, auth: dict, header: str, sent: str
):
    # The server echoes every header back; the result must show *** instead of the secret.
    tool = http_tool(project, {"method": "GET", "url": server.url + "/me", "auth": auth})
    result = call(tool)
    assert result.ok, result.error
    (seen,) = server.requests
    assert seen.headers[header] == sent
    dumped = json.dumps(result.output)
    assert PASSWORD not in dumped
    assert TOKEN not in dumped
    assert sent not in dumped
    assert "***" in result.output["headers"][header]


def test_secrets_in_templates_are_sent_and_redacted_everywhere(server: ToolServer, project: Any):
    server.script("/fail", Reply(status=403, body={"detail": f"bad token {TOKEN}"}))
    tool = http_tool(
        project,
        {
            "method": "GET",
            "url": server.url + "/fail",
            "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
            "query": {"key": "{{ secrets.PASSWORD }}"},
        },
    )
    result = call(tool)
    assert not result.ok
    (seen,) = server.requests
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.query == {"key": [PASSWORD]}
    assert TOKEN not in (result.error or "")
    assert result.error == 'HTTP 403: {"detail": "bad token ***"}'
    assert result.output == {"detail": "bad token ***"}


def test_idempotency_key_header(server: ToolServer, project: Any):
    tool = http_tool(project, {"method": "POST", "url": server.url + "/charge"})
    call(tool, idempotency_key="run-7-step-3-attempt-1")
    call(tool)
    first, second = server.requests
    assert first.headers["x-idempotency-key"] == "run-7-step-3-attempt-1"
    assert "x-idempotency-key" not in second.headers


def test_retries_on_500_then_succeeds(server: ToolServer, project: Any):
    server.script("/flaky", Reply(status=500, body={"error": "boom"}), Reply(body={"ok": 1}))
    tool = http_tool(
        project,
        {"method": "POST", "url": server.url + "/flaky", "retries": 2, "retry_backoff_seconds": 0},
    )
    result = call(tool, idempotency_key="k1")
    assert result.ok, result.error
    assert result.output == {"ok": 1}
    calls = server.calls("/flaky")
    assert len(calls) == 2
    # The same key on every attempt: the server can tell a retry from a new call.
    assert {c.headers["x-idempotency-key"] for c in calls} == {"k1"}


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retryable_statuses_fail_retryable_after_the_retries(
    server: ToolServer, project: Any, status: int
):
    server.script("/down", *[Reply(status=status, body={"error": "down"})] * 3)
    tool = http_tool(
        project,
        {"method": "GET", "url": server.url + "/down", "retries": 2, "retry_backoff_seconds": 0},
    )
    result = call(tool)
    assert not result.ok
    assert result.retryable is True
    assert result.http_status == status
    assert len(server.calls("/down")) == 3
    assert result.error == f'HTTP {status}: {{"error": "down"}} (after 3 attempts)'


def test_retry_after_is_honoured_within_bounds(server: ToolServer, project: Any):
    server.script("/busy", Reply(status=429, headers={"Retry-After": "0"}), Reply(body=[1]))
    tool = http_tool(
        project,
        {"method": "GET", "url": server.url + "/busy", "retries": 1, "retry_backoff_seconds": 0},
    )
    result = call(tool)
    assert (result.ok, result.output) == (True, [1])
    assert len(server.calls("/busy")) == 2


def test_the_callers_timeout_bounds_all_attempts(server: ToolServer, project: Any):
    # Five retries of a hanging server, but the step only has 0.3 s: no retry fits after
    # the first timeout (the default backoff alone is 0.5 s), so the call ends at once.
    tool = http_tool(project, {"method": "GET", "url": server.url + "/hang", "retries": 5})
    result = call(tool, timeout=0.3)
    assert (result.ok, result.retryable) == (False, True)
    assert len(server.calls("/hang")) == 1
    assert result.latency_ms < 2000


def test_no_retries_by_default(server: ToolServer, project: Any):
    server.script("/down", Reply(status=502, body="bad gateway"))
    tool = http_tool(project, {"method": "GET", "url": server.url + "/down"})
    result = call(tool)
    assert (result.ok, result.retryable, result.http_status) == (False, True, 502)
    assert len(server.calls("/down")) == 1


def test_404_is_not_retried(server: ToolServer, project: Any):
    server.script("/missing", Reply(status=404, body={"detail": "no such item"}))
    tool = http_tool(
        project,
        {"method": "GET", "url": server.url + "/missing", "retries": 3, "retry_backoff_seconds": 0},
    )
    result = call(tool)
    assert not result.ok
    assert result.retryable is False
    assert result.http_status == 404
    assert result.output == {"detail": "no such item"}
    assert len(server.calls("/missing")) == 1


def test_connection_errors_are_retried_then_retryable(project: Any, allow_loopback: None):
    with ToolServer() as gone:
        url = gone.url + "/x"
    tool = http_tool(
        project, {"method": "GET", "url": url, "retries": 1, "retry_backoff_seconds": 0}
    )
    result = call(tool)
    assert not result.ok
    assert result.retryable is True
    assert result.http_status is None
    assert "failed" in (result.error or "")
    assert "(after 2 attempts)" in (result.error or "")


def test_timeouts_are_retryable(server: ToolServer, project: Any):
    tool = http_tool(
        project, {"method": "GET", "url": server.url + "/hang", "timeout_seconds": 0.2}
    )
    result = call(tool)
    assert not result.ok
    assert result.retryable is True
    assert "timed out" in (result.error or "")


@pytest.mark.parametrize(
    "url",
    ["http://10.1.2.3/admin", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:9/"],
)
def test_private_targets_not_allow_listed_are_refused(project: Any, allow_loopback: None, url: str):
    tool = http_tool(project, {"method": "GET", "url": url, "retries": 3})
    result = call(tool)
    assert not result.ok
    assert result.retryable is False
    assert (result.error or "").startswith("Request refused:")


def test_loopback_is_refused_without_the_allow_list(project: Any, settings: Any):
    settings.SPARKOPS_OUTBOUND_ALLOW = []
    with ToolServer() as local:
        tool = http_tool(project, {"method": "GET", "url": local.url + "/"})
        result = call(tool)
        assert local.requests == []
    assert not result.ok
    assert "loopback" in (result.error or "")


def test_arguments_cannot_pick_the_host_of_a_tool_that_sends_secrets(
    server: ToolServer, project: Any
):
    auth = {"type": "bearer", "secret": "API_TOKEN"}
    params = {"type": "object", "properties": {"path": {"type": "string"}}}
    with pytest.raises(InvalidInput) as caught:
        http_tool(
            project, {"method": "GET", "url": server.url + "{{ args.path }}", "auth": auth}, params
        )
    assert "must be literal" in caught.value.errors["config.url"][0]
    tool = http_tool(
        project, {"method": "GET", "url": server.url + "/{{ args.path }}", "auth": auth}, params
    )
    assert call(tool, {"path": "@evil.example/steal"}).ok
    (seen,) = server.requests  # the argument stayed in the path, on our server
    assert seen.path == "/@evil.example/steal"


def test_a_missing_secret_is_a_clear_failure(server: ToolServer, project: Any):
    tool = http_tool(
        project,
        {"method": "GET", "url": server.url + "/", "auth": {"type": "bearer", "secret": "NOPE"}},
    )
    result = call(tool)
    assert not result.ok
    assert "Secret 'NOPE' does not exist" in (result.error or "")
    assert server.requests == []


def test_render_errors_are_failures_not_crashes(server: ToolServer, project: Any):
    tool = http_tool(project, {"method": "GET", "url": server.url + "/{{ args.missing }}"})
    result = call(tool)
    assert not result.ok
    assert result.error.startswith("Could not render config.url")
    assert server.requests == []


def test_head_has_no_output(server: ToolServer, project: Any):
    tool = http_tool(project, {"method": "HEAD", "url": server.url + "/"})
    result = call(tool)
    assert result.ok
    assert result.output is None
    assert server.requests[0].method == "HEAD"


# --- files ------------------------------------------------------------------------------------


def test_an_invoke_saves_the_response_as_a_file_of_the_project(
    server: ToolServer, project: Any, cast: Any, local_files: Any
):
    server.script("/export", Reply(body=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"}))
    tool = http_tool(
        project,
        {
            "method": "POST",
            "url": server.url + "/export",
            "save_response_as_file": True,
            "response_file_name": "export-{{ args.n }}.csv",
        },
        {"type": "object", "properties": {"n": {"type": "integer"}}},
    )
    result = services.tool_invoke(tool=tool, actor=cast.developer, project=None, arguments={"n": 3})
    assert result.ok, result.error
    saved = File.objects.get(pk=result.output["file"])
    assert result.output == files.file_ref(saved)
    assert (saved.name, saved.content_type, saved.project_id) == (
        "export-3.csv",
        "text/csv",
        project.pk,
    )
    assert (saved.source, saved.uploaded_by, saved.run_id) == ("upload", cast.developer, None)
    assert files.file_read(saved) == b"a,b\n1,2\n"


def test_the_invoke_api_answers_a_saved_file_with_its_download_url(
    server: ToolServer, project: Any, cast: Any, local_files: Any
):
    server.script("/export", Reply(body=b"a,b\n", headers={"Content-Type": "text/csv"}))
    config = {"method": "POST", "url": server.url + "/export", "save_response_as_file": True}
    tool = http_tool(project, config)
    response = cast.client("developer").post(
        f"/api/v1/tools/{tool.pk}/invoke/", {"arguments": {}}, format="json"
    )
    assert response.status_code == 200, response.json()
    output = response.json()["output"]
    saved = File.objects.get(pk=output["file"])
    url = f"http://testserver/api/v1/files/{saved.pk}/content/"
    assert output == {**files.file_ref(saved), "url": url}


def test_without_a_project_a_file_tool_fails_clearly(server: ToolServer, project: Any):
    for config, message in (
        ({"body_file": "{{ args.f }}"}, "config.body_file: this tool sends a file"),
        ({"save_response_as_file": True}, "saves its response as a file, which needs a project"),
    ):
        tool = http_tool(project, {"method": "POST", "url": server.url + "/x", **config})
        result = call(tool, {"f": {"file": "x"}})
        assert not result.ok and message in (result.error or ""), result.error
    assert server.calls("/x") == []
