"""Secrets leave a run in no form: not URL-quoted (`+` or `%20`), JSON-escaped, base64'd or
re-cased in what viewers read through the API or webhooks deliver, not transformed by a
template, and never in a log line (worker and web), at any level."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote, quote_plus, urlencode

import pytest

from projects import services as project_services
from projects import webhooks
from projects.models import WebhookDelivery
from projects.secrets import secret_variants
from projects.tests.receiver import Receiver
from runs import services
from runs.tests.conftest import http_tool, tool_node
from runs.tests.factories import make_workflow, transform
from sparkops.logcontext import HTTP_LOGGERS
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")

# A space, a quote, a slash, a plus and a non-ASCII letter: every encoding differs from the raw.
VALUE = 'tok en"7/+Zq-ß-9d3f'
PATH_VALUE = "p4th-tok-7f3a9c2e"  # a URL path cannot hold a space


def encodings(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "raw": value,
        "quote": quote(value, safe=""),
        "quote_slash": quote(value),
        "quote_plus": quote_plus(value),
        "json": json.dumps(value)[1:-1],
        "json_ascii_off": json.dumps(value, ensure_ascii=False)[1:-1],
        "base64": base64.b64encode(raw).decode(),
        "base64_url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "upper": value.upper(),
        "lower": value.lower(),
    }


def assert_clean(text: str, where: str) -> None:
    for value in (VALUE, PATH_VALUE):
        found = {name for name, form in encodings(value).items() if form in text}
        assert not found, f"{where} holds the secret as {sorted(found)}"


def careless(hit):
    """An endpoint that echoes what it got in every encoding a careless API might use."""
    got = hit.query["key"][0]
    return 200, {
        "raw_query": urlencode(hit.query, doseq=True),  # key=tok+en%22...
        "quoted": quote(got),  # tok%20en%22...
        "json_text": json.dumps(hit.body),  # {"note": "tok en\"7..."}
        "b64": base64.b64encode(got.encode()).decode(),
        "shout": got.upper(),
    }


def test_variants_cover_every_encoding():
    assert set(encodings(VALUE).values()) <= secret_variants(VALUE)


def test_a_viewer_and_a_webhook_see_no_form_of_the_secret(cast, tool_server, settings):
    project_services.secret_create(project=cast.project, actor=cast.owner, name="K", value=VALUE)
    url = tool_server.route("/careless", careless)
    http_tool(cast.project, cast.owner, "careless", url, query={"key": "{{ secrets.K }}"})
    with Receiver() as receiver:
        webhooks.endpoint_create(
            actor=cast.admin, project=cast.project, url=receiver.url, events=["run.succeeded"]
        )
        workflow = make_workflow(
            cast.project,
            cast.owner,
            [tool_node("call", "careless", {"note": "{{ secrets.K }}"})],
            output={"result": "{{ steps.call.output }}"},
        )
        run = wait_for_run(services.run_create(workflow=workflow, input={}, actor=cast.owner).pk)
        assert run.status == "succeeded", run.error
        wait_until(lambda: WebhookDelivery.objects.filter(status="delivered").exists())
        delivered = b"".join(r.raw for r in receiver.requests).decode()

    hit = tool_server.calls("/careless")[0]
    assert hit.query["key"] == [VALUE] and hit.body == {"note": VALUE}  # it did travel
    viewer = cast.client("viewer")
    seen = "".join(
        viewer.get(f"/api/v1/runs/{run.pk}/{suffix}").content.decode()
        for suffix in ("", "steps/", "events/")
    )
    assert '"raw_query"' in seen and '"shout"' in seen
    assert_clean(seen, "the API")
    assert '"raw_query"' in delivered
    assert_clean(delivered, "the webhook payload")


@pytest.mark.parametrize(
    "template",
    [
        "{{ secrets.K|upper }}",
        "{{ secrets.K|reverse }}",
        "{{ secrets.K[1:] }}",
        "{% set s %}{{ secrets.K }}{% endset %}{{ s|lower }}",
    ],
)
def test_a_transformed_secret_fails_the_step_naming_the_secret(cast, template):
    project_services.secret_create(project=cast.project, actor=cast.owner, name="K", value=VALUE)
    workflow = make_workflow(cast.project, cast.owner, [transform("t", {"x": template})])
    run = wait_for_run(services.run_create(workflow=workflow, input={}, actor=cast.owner).pk)
    assert run.status == "failed"
    error = run.steps.get(node_id="t").error
    assert error["type"] == "template_error"
    assert "Secret 'K' can only be used as a whole value" in error["message"]
    seen = cast.client("viewer").get(f"/api/v1/runs/{run.pk}/steps/").content.decode()
    assert_clean(seen, "the API")


# --- logs ----------------------------------------------------------------------------------------


@pytest.fixture
def console_log() -> Iterator[io.StringIO]:
    """The real console handler of settings.LOGGING (JSON formatter, its filters), writing into
    a buffer, with every logger (the HTTP libraries' too) at DEBUG."""
    handler = next(
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.get_name() == "console"
    )
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    names = ["", *HTTP_LOGGERS, "sparkops", "runs", "tools", "celery"]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        handler.setStream(previous)


def logged_tool(cast, tool_server):
    project_services.secret_create(project=cast.project, actor=cast.owner, name="K", value=VALUE)
    project_services.secret_create(
        project=cast.project, actor=cast.owner, name="P", value=PATH_VALUE
    )
    # secrets in the path and the query, as a careless tool author would put them
    return http_tool(
        cast.project,
        cast.owner,
        "logged",
        tool_server.url + "/logged/{{ secrets.P }}",
        query={"key": "{{ secrets.K }}", "plain": "visible"},
    )


def test_no_log_line_of_the_worker_holds_the_secret(cast, tool_server, console_log):
    logged_tool(cast, tool_server)
    workflow = make_workflow(cast.project, cast.owner, [tool_node("call", "logged", {})])
    run = wait_for_run(services.run_create(workflow=workflow, input={}, actor=cast.owner).pk)
    assert run.status == "succeeded", run.error
    assert tool_server.calls("/logged/" + PATH_VALUE)  # the request carried it

    lines = [json.loads(line) for line in console_log.getvalue().splitlines()]
    http_lines = [line for line in lines if line["logger"] == "httpx"]
    assert http_lines, "the HTTP client logged its request at DEBUG/INFO"
    assert all("plain=" not in line["message"] for line in http_lines)  # no query string
    assert any(line.get("run_id") == str(run.pk) for line in lines)
    assert_clean(console_log.getvalue(), "the worker's log")


def test_no_log_line_of_the_web_invoke_holds_the_secret(cast, tool_server, console_log, settings):
    tool = logged_tool(cast, tool_server)
    response = cast.client("developer").post(
        f"/api/v1/tools/{tool.pk}/invoke/", {"arguments": {}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["ok"] is True
    assert tool_server.calls("/logged/" + PATH_VALUE)

    lines = [json.loads(line) for line in console_log.getvalue().splitlines()]
    assert any(line["logger"] == "httpx" for line in lines)
    assert any(line["message"] == "tool invoked" for line in lines)
    assert_clean(console_log.getvalue(), "the web log")
    assert_clean(response.content.decode(), "the invoke answer")


def test_http_library_loggers_are_quiet_by_default(settings):
    for name in HTTP_LOGGERS:
        assert settings.LOGGING["loggers"][name]["level"] == "WARNING"


def test_a_tool_changed_to_pick_its_host_gets_no_secret_at_run_time(cast, tool_server):
    from tools import services as tool_services

    project_services.secret_create(project=cast.project, actor=cast.owner, name="K", value=VALUE)
    tool = http_tool(cast.project, cast.owner, "hook", tool_server.url + "/fixed")
    workflow = make_workflow(
        cast.project, cast.owner, [tool_node("call", "hook", {"token": "{{ secrets.K }}"})]
    )
    # After the workflow was saved, the tool starts taking its host from the arguments.
    tool_services.tool_update(
        tool=tool,
        actor=cast.owner,
        parameters={"type": "object", "properties": {"token": {}, "target": {}}},
        config={
            "method": "POST",
            "url": "{{ args.target | default('" + tool_server.url + "') }}/x",
            "body": "{{ args }}",
        },
    )
    run = wait_for_run(services.run_create(workflow=workflow, input={}, actor=cast.owner).pk)
    assert run.status == "failed"
    assert "a secret could be sent anywhere" in run.steps.get(node_id="call").error["message"]
    assert tool_server.hits == []
