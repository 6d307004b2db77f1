"""Metrics, traces and log context of real runs on the in-process Celery worker: `/metrics`
parsed with prometheus-client's parser, spans captured with the SDK's in-memory exporter and
exported over OTLP/HTTP to local collectors, log records captured with their run context."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agents.tests.factories import remote_agent, scripted_agent
from runs import services
from runs.models import RunEvent, RunStep
from runs.tests.conftest import builtin_tool
from runs.tests.factories import (
    agent_and_tool_workflow,
    finished_run,
    make_workflow,
    metered_workflow,
    transform,
)
from sparkops import logcontext, metrics, tracing
from sparkops.testing.engine import wait_for_run, wait_until
from sparkops.testing.scraping import delta, scrape, scrape_until, value

pytestmark = pytest.mark.usefixtures("metrics_token")

# --- helpers ------------------------------------------------------------------------------------


def start(workflow: Any, actor: Any, input: dict[str, Any] | None = None) -> Any:
    return services.run_create(workflow=workflow, input=input or {}, actor=actor)


# --- /metrics after a real run ------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_metrics_count_a_real_run(cast):
    workflow = metered_workflow(cast)
    wf = {"project": "acme", "workflow": workflow.slug}
    before = scrape()

    run = wait_for_run(start(workflow, cast.owner).pk)
    assert run.status == "succeeded", run.error
    after = scrape_until(before, "sparkops_runs_finished_total", status="succeeded", **wf)

    assert delta(before, after, "sparkops_runs_created_total", trigger="api") == 1
    assert delta(before, after, "sparkops_runs_started_total", **wf) == 1
    assert delta(before, after, "sparkops_runs_finished_total", status="succeeded", **wf) == 1
    assert delta(before, after, "sparkops_run_queue_wait_seconds_count", **wf) == 1
    assert (
        delta(before, after, "sparkops_run_duration_seconds_count", status="succeeded", **wf) == 1
    )
    for type in ("transform", "agent", "tool"):
        assert (
            delta(
                before,
                after,
                "sparkops_step_duration_seconds_count",
                type=type,
                outcome="succeeded",
            )
            >= 1
        ), type
        assert delta(before, after, "sparkops_step_queue_wait_seconds_count", type=type) >= 1

    model = {"provider": "simulated", "model": "sim-metrics"}
    assert delta(before, after, "sparkops_model_calls_total", **model) == 2
    assert delta(before, after, "sparkops_model_tokens_total", type="input", **model) == 14
    assert delta(before, after, "sparkops_model_tokens_total", type="output", **model) == 6
    # 2 calls * (7 * $1000 + 3 * $2000) / 1M tokens
    assert delta(before, after, "sparkops_model_cost_usd_total", **model) == pytest.approx(0.026)
    assert delta(before, after, "sparkops_model_call_duration_seconds_count", **model) == 2
    assert delta(before, after, "sparkops_model_calls_unpriced_total", **model) == 0
    assert delta(before, after, "sparkops_spend_usd_total", project="acme") == pytest.approx(
        float(run.cost)
    )
    assert run.cost == Decimal("0.026")
    # one call in the agent's loop, one tool step
    assert delta(before, after, "sparkops_tool_calls_total", tool="calc_metrics", outcome="ok") == 2
    assert (
        delta(before, after, "sparkops_tool_call_duration_seconds_count", tool="calc_metrics") == 2
    )
    # Database gauges: nothing is left running.
    assert value(after, "sparkops_runs_active", status="running") == 0


@pytest.mark.usefixtures("engine")
def test_failed_steps_and_tool_errors_are_counted(cast):
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [transform("bad", "{{ input.missing.deeper }}")],
        name="metrics-failing",
    )
    before = scrape()
    run = wait_for_run(start(workflow, cast.owner).pk)
    assert run.status == "failed"
    wf = {"project": "acme", "workflow": workflow.slug}
    after = scrape_until(before, "sparkops_runs_finished_total", status="failed", **wf)
    assert (
        delta(
            before,
            after,
            "sparkops_step_duration_seconds_count",
            type="transform",
            outcome="failed",
        )
        == 1
    )
    assert delta(before, after, "sparkops_runs_finished_total", status="succeeded", **wf) == 0


# --- what the database says at scrape time ------------------------------------------------------


def test_database_gauges(cast):
    finished_run(cast, status="queued")
    waiting = finished_run(cast, status="running")
    RunStep.objects.create(
        run=waiting,
        node_id="later",
        type="transform",
        status="queued",
        queued_at=timezone.now() - timedelta(seconds=30),
    )
    RunStep.objects.create(  # a retry waiting for its backoff is not backlog
        run=waiting,
        node_id="retry",
        type="transform",
        status="queued",
        queued_at=timezone.now() - timedelta(seconds=300),
        next_attempt_at=timezone.now() + timedelta(seconds=60),
    )
    samples = scrape()
    assert value(samples, "sparkops_runs_active", status="queued") == 1
    assert value(samples, "sparkops_runs_active", status="running") == 1
    assert value(samples, "sparkops_runs_active", status="pending") == 0
    assert value(samples, "sparkops_steps_queued") == 1
    assert 30 <= value(samples, "sparkops_steps_queued_oldest_age_seconds") < 300


def test_policy_denials_are_counted_from_committed_events(cast, django_capture_on_commit_callbacks):
    run = finished_run(cast, status="running")
    before = scrape()
    decision = {"policy": "no-big-models", "point": "before_model_call", "mode": "enforce"}
    with django_capture_on_commit_callbacks(execute=True):
        services.events_append(
            run.pk,
            [
                {"type": RunEvent.Type.POLICY, "payload": {**decision, "outcome": "deny"}},
                {"type": RunEvent.Type.POLICY, "payload": {**decision, "outcome": "redact"}},
                {
                    "type": RunEvent.Type.POLICY,
                    "payload": {**decision, "mode": "audit", "outcome": "deny"},
                },
            ],
        )
    after = scrape()
    point = {"point": "before_model_call"}
    assert delta(before, after, "sparkops_policy_denials_total", mode="enforce", **point) == 1
    assert delta(before, after, "sparkops_policy_denials_total", mode="audit", **point) == 1


def test_rolled_back_events_are_not_counted(cast, django_capture_on_commit_callbacks):
    run = finished_run(cast, status="running")
    before = scrape()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.events_append(
            run.pk,
            [{"type": RunEvent.Type.POLICY, "payload": {"point": "rollback", "outcome": "deny"}}],
        )
    assert len(callbacks) == 1  # deferred to the commit, which never comes
    after = scrape()
    assert (
        delta(before, after, "sparkops_policy_denials_total", mode="enforce", point="rollback") == 0
    )


# --- several processes ---------------------------------------------------------------------------


def test_metrics_add_up_across_processes(db):
    """What a Celery worker process (or another gunicorn worker) counts shows up in this
    process's /metrics: prometheus-client's multiprocess files, one set per pid."""
    assert metrics.multiprocess_dir()
    metrics.webhook_deliveries.labels("from-two-processes").inc(2)
    code = (
        "from prometheus_client import Counter\n"
        "Counter('sparkops_webhook_deliveries', 'x', ['outcome'])"
        ".labels('from-two-processes').inc(3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    samples = scrape()
    assert value(samples, "sparkops_webhook_deliveries_total", outcome="from-two-processes") == 5
    metrics.mark_process_dead()  # live gauges only: the counters stay
    samples = scrape()
    assert value(samples, "sparkops_webhook_deliveries_total", outcome="from-two-processes") == 5


# --- who may scrape -------------------------------------------------------------------------------


def test_metrics_are_closed_to_anonymous_callers_even_from_localhost(db):
    # A reverse proxy on this host makes every client 127.0.0.1: "local" proves nothing.
    for client in (Client(), Client(REMOTE_ADDR="::ffff:127.0.0.1"), Client(REMOTE_ADDR="::1")):
        response = client.get("/metrics")
        assert response.status_code == 403
        assert response.json()["type"] == "permission_denied"
        assert "sparkops_" not in response.content.decode()
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics/").status_code == 403


def test_metrics_are_closed_when_no_token_is_set(db, settings):
    settings.SPARKOPS_METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403
    assert Client().get("/metrics").status_code == 403


def test_metrics_with_the_bearer_token(db, metrics_token):
    local, remote = Client(), Client(REMOTE_ADDR="10.1.2.3")
    for client in (local, remote):
        assert client.get("/metrics").status_code == 403
        wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong")
        assert wrong.status_code == 403
        assert wrong.json()["type"] == "permission_denied"
        assert (
            client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {metrics_token}").status_code == 403
        )
        right = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}")
        assert right.status_code == 200
        assert b"sparkops_runs_active" in right.content
    assert remote.get("/metrics/", HTTP_AUTHORIZATION=f"bearer {metrics_token}").status_code == 200
    assert (
        Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}").status_code == 405
    )


def test_metrics_allow_list_of_networks(db, settings):
    settings.SPARKOPS_METRICS_TOKEN = ""
    settings.SPARKOPS_METRICS_ALLOW = ["10.0.0.0/8", "fd00::/8", "127.0.0.1/32"]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="fd00::5").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::ffff:127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="192.168.1.1").get("/metrics").status_code == 403
    settings.SPARKOPS_METRICS_ALLOW = ["10.0.0.0/8"]
    assert Client().get("/metrics").status_code == 403  # 127.0.0.1 is not listed


def test_make_run_writes_a_metrics_token_that_scrapes(db, settings, tmp_path):
    """README: `make run` writes a random token into .env, and the curl shown there reads it."""
    shutil.copy(settings.BASE_DIR / "Makefile", tmp_path / "Makefile")
    for i in range(2):  # two fresh .env files: two different tokens
        subprocess.run(["make", "-s", ".env"], cwd=tmp_path, check=True, timeout=60)
        env = (tmp_path / ".env").read_text()
        (tmp_path / ".env").rename(tmp_path / f"env-{i}")
    tokens = [
        subprocess.run(
            ["sed", "-n", "s/^SPARKOPS_METRICS_TOKEN=//p", str(tmp_path / f"env-{i}")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for i in range(2)
    ]
    assert all(len(token) >= 32 for token in tokens) and tokens[0] != tokens[1], env
    settings.SPARKOPS_METRICS_TOKEN = tokens[1]
    assert scrape(HTTP_AUTHORIZATION=f"Bearer {tokens[1]}")
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {tokens[0]}").status_code == 403


# --- traces ---------------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup([exporter], batch=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def run_span_of(exporter: InMemorySpanExporter, run: Any) -> Any:
    """Wait for the run span (emitted after the finishing transaction commits)."""

    def find() -> Any:
        for span in exporter.get_finished_spans():
            attributes = span.attributes or {}
            if attributes.get("sparkops.run.id") == str(run.pk) and span.parent is None:
                return span
        return None

    return wait_until(find, what="the run span")


@pytest.mark.usefixtures("engine")
def test_spans_of_a_run_nest_run_step_and_calls(cast, spans):
    calc = builtin_tool(cast.project, cast.owner, "calc", "calculator")
    scripted_agent(cast, model="sim-1", tool=calc)
    workflow = agent_and_tool_workflow(cast, "traced", calc)

    run = wait_for_run(start(workflow, cast.owner).pk)
    assert run.status == "succeeded", run.error
    root = run_span_of(spans, run)
    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == run.pk.int]
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)

    # One trace per run: its id is the run's UUID; the run span is the root.
    assert root.name == f"invoke_workflow {workflow.slug}"
    assert root.context.span_id == tracing.run_span_id(run.pk)
    assert root.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert root.attributes["gen_ai.workflow.name"] == workflow.slug
    assert root.attributes["sparkops.run.status"] == "succeeded"
    assert root.attributes["gen_ai.usage.input_tokens"] == 14
    assert root.attributes["gen_ai.usage.output_tokens"] == 6
    assert root.status.status_code == StatusCode.UNSET

    # run → steps
    (prep,) = by_name["step prep"]
    (think,) = by_name["invoke_agent helper"]
    (sum_step,) = by_name["step sum"]
    for step in (prep, think, sum_step):
        assert step.parent.span_id == root.context.span_id
        assert step.context.trace_id == root.context.trace_id
        assert root.start_time <= step.start_time <= step.end_time <= root.end_time
    assert think.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert think.attributes["gen_ai.agent.name"] == "helper"
    assert think.attributes["sparkops.step.outcome"] == "succeeded"
    assert prep.attributes["sparkops.step.type"] == "transform"

    # agent step → model calls, with the GenAI conventions
    chats = by_name["chat sim-1"]
    assert len(chats) == 2
    for chat in chats:
        assert chat.parent.span_id == think.context.span_id
        assert chat.kind == SpanKind.CLIENT
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "simulated"
        assert chat.attributes["gen_ai.system"] == "simulated"
        assert chat.attributes["gen_ai.request.model"] == "sim-1"
        assert chat.attributes["gen_ai.response.model"] == "sim-1"
        assert chat.attributes["gen_ai.usage.input_tokens"] == 7
        assert chat.attributes["gen_ai.usage.output_tokens"] == 3
    assert [c.attributes["gen_ai.response.finish_reasons"] for c in chats] == [
        ("tool_calls",),
        ("stop",),
    ]

    # tool calls: one inside the agent's loop, one as its own step
    tool_spans = by_name["execute_tool calc"]
    assert {t.parent.span_id for t in tool_spans} == {
        think.context.span_id,
        sum_step.context.span_id,
    }
    for tool_span in tool_spans:
        assert tool_span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool_span.attributes["gen_ai.tool.name"] == "calc"
        assert tool_span.attributes["sparkops.tool.ok"] is True
    in_loop = next(t for t in tool_spans if t.parent.span_id == think.context.span_id)
    assert in_loop.attributes["sparkops.agent.iteration"] == 1

    # The Celery message that started a step carried the traceparent of the step that
    # scheduled it (W3C trace context in the task headers): a link, "scheduled by".
    assert [link.context.span_id for link in think.links] == [prep.context.span_id]
    assert [link.context.span_id for link in sum_step.links] == [think.context.span_id]


@pytest.mark.usefixtures("engine")
def test_failures_mark_spans_as_errors(cast, spans, fake_llm):
    remote_agent(cast, slug="remote", base_url=fake_llm.openai_base_url)
    fake_llm.enqueue("openai", {"status": 401})
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [{"id": "ask", "type": "agent", "agent": "remote", "prompt": "Hi"}],
        name="traced-failure",
    )
    errors = {"provider": "openai", "model": "gpt-test-1"}
    before = scrape()
    run = wait_for_run(start(workflow, cast.owner).pk)
    assert run.status == "failed"
    root = run_span_of(spans, run)
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["error.type"] == "step_failed"
    step = next(s for s in spans.get_finished_spans() if s.name == "invoke_agent remote")
    chat = next(s for s in spans.get_finished_spans() if s.name == "chat gpt-test-1")
    assert chat.parent.span_id == step.context.span_id
    assert chat.status.status_code == StatusCode.ERROR
    error_type = chat.attributes["error.type"]
    assert error_type == run.steps.get().error["type"]
    assert step.status.status_code == StatusCode.ERROR
    assert step.attributes["sparkops.step.outcome"] == "failed"
    after = scrape()
    assert (
        delta(before, after, "sparkops_model_call_errors_total", error_type=error_type, **errors)
        == 1
    )


def test_tracing_is_off_unless_configured(settings):
    assert not tracing.enabled()
    assert tracing.exporters_from_settings() == []
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = "http://127.0.0.1:4318"
    settings.OTEL_SDK_DISABLED = True
    assert tracing.exporters_from_settings() == []
    # Off, the helpers do nothing at all.
    with tracing.span("nothing") as span:
        assert span is None
    headers: dict[str, Any] = {}
    tracing.inject_headers(headers)
    assert headers == {}


# --- OTLP/HTTP export to a collector and to LangWatch ---------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class OTLPReceiver:
    """An OTLP/HTTP endpoint on 127.0.0.1 that records what it receives."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.received.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length),
                    )
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def span_names(self, trace_id: bytes) -> set[str]:
        names = set()
        for item in list(self.received):
            request = ExportTraceServiceRequest.FromString(item.body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    names |= {s.name for s in scope_spans.spans if s.trace_id == trace_id}
        return names

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[tuple[OTLPReceiver, OTLPReceiver]]:
    collector, langwatch = OTLPReceiver(), OTLPReceiver()
    try:
        yield collector, langwatch
    finally:
        tracing.shutdown()
        collector.stop()
        langwatch.stop()


@pytest.mark.usefixtures("engine")
def test_spans_are_exported_over_otlp_http(cast, settings, monkeypatch, receivers):
    collector, langwatch = receivers
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = collector.url
    settings.LANGWATCH_API_KEY = "lw-test-key"
    settings.LANGWATCH_ENDPOINT = langwatch.url
    # Headers meant for the collector (its API key) must not travel to LangWatch.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=collector-secret")
    assert tracing.configure_from_settings()

    workflow = make_workflow(
        cast.project, cast.owner, [transform("a", 1), transform("b", 2, "a")], name="exported"
    )
    run = wait_for_run(start(workflow, cast.owner).pk)
    assert run.status == "succeeded"
    expected = {f"invoke_workflow {workflow.slug}", "step a", "step b"}

    def arrived() -> bool:
        tracing.force_flush()
        return all(expected <= r.span_names(run.pk.bytes) for r in receivers)

    wait_until(arrived, what="the run's spans at both OTLP endpoints")
    assert {r.path for r in collector.received} == {"/v1/traces"}
    assert {r.path for r in langwatch.received} == {"/api/otel/v1/traces"}
    for item in collector.received + langwatch.received:
        assert item.headers["content-type"] == "application/x-protobuf"
        assert item.body
    assert all(r.headers["x-collector-key"] == "collector-secret" for r in collector.received)
    assert all("authorization" not in r.headers for r in collector.received)
    assert all(r.headers["authorization"] == "Bearer lw-test-key" for r in langwatch.received)
    assert all("x-collector-key" not in r.headers for r in langwatch.received)


# --- log context ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_engine_log_lines_carry_the_run_context(cast, caplog):
    caplog.handler.addFilter(logcontext.RunContextFilter())
    caplog.set_level(logging.INFO, logger="sparkops.engine")
    workflow = make_workflow(
        cast.project, cast.owner, [transform("a", 1), transform("b", 2, "a")], name="logged"
    )
    run = wait_for_run(start(workflow, cast.owner).pk)
    assert run.status == "succeeded"
    wait_until(
        lambda: any(
            r.getMessage() == "run succeeded" and getattr(r, "run_id", None) == str(run.pk)
            for r in list(caplog.records)
        ),
        what="the run's last log line",
    )
    mine = [r for r in list(caplog.records) if getattr(r, "run_id", None) == str(run.pk)]
    started = {r.step: r for r in mine if r.getMessage() == "step started"}
    assert set(started) == {"a", "b"}
    for record in started.values():
        assert record.project_id == cast.project.pk
        assert record.attempt == 1
    succeeded = [r for r in mine if r.getMessage() == "step succeeded"]
    assert {r.step for r in succeeded} == {"a", "b"}
    assert all(isinstance(r.duration_ms, int) for r in succeeded)

    # The JSON formatter of settings.LOGGING writes them as top-level keys.
    from pythonjsonlogger.json import JsonFormatter

    options = {k: v for k, v in settings.LOGGING["formatters"]["json"].items() if k != "()"}
    line = json.loads(JsonFormatter(**options).format(started["b"]))
    assert line["run_id"] == str(run.pk)
    assert line["project_id"] == str(cast.project.pk)
    assert line["step"] == "b"
    assert line["message"] == "step started"
    assert line["level"] == "INFO"


def test_log_scopes_nest_and_never_leak():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    logcontext.bind(run_id="outside")  # no scope: ignored
    assert logcontext.current() == {}
    with logcontext.scope(run_id="r1", project_id=1):
        logcontext.bind(step="a")
        with logcontext.scope(step="b"):
            assert logcontext.current() == {"run_id": "r1", "project_id": 1, "step": "b"}
        assert logcontext.current() == {"run_id": "r1", "project_id": 1, "step": "a"}
        record.step = "explicit"  # an explicit extra= wins
        logcontext.RunContextFilter().filter(record)
    assert logcontext.current() == {}
    assert (record.run_id, record.project_id, record.step) == ("r1", 1, "explicit")


def test_logging_settings_install_the_filter():

    assert settings.LOGGING["handlers"]["console"]["filters"] == ["run_context", "redact_secrets"]
    console = [
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, logcontext.RunContextFilter) for f in h.filters)
    ]
    assert console


def test_secret_filter_redacts_message_exception_and_extras_and_forgets_after_the_scope():
    secret = "s3cr3t-v4lue"
    redactor = logcontext.SecretRedactFilter()

    def record(**extra):
        try:
            raise ValueError(f"boom {secret}")
        except ValueError:
            import sys

            item = logging.LogRecord("app", logging.ERROR, __file__, 1, "got %s", (secret,), None)
            item.exc_info = sys.exc_info()
        for key, extra_value in extra.items():
            setattr(item, key, extra_value)
        return item

    with logcontext.scope(run_id="r1"):
        with logcontext.scope(step="a"):
            logcontext.add_secrets([secret])  # read in an inner scope...
        # ...still hidden in the outer one
        inside = record(url=f"https://x.test/?k={secret}", payload={"items": [secret]})
        assert redactor.filter(inside)
    assert inside.getMessage() == "got ***"
    assert "boom ***" in inside.exc_text and secret not in inside.exc_text
    assert inside.url == "https://x.test/?k=***"
    assert inside.payload == {"items": ["***"]}
    after = record()
    redactor.filter(after)
    broken = logging.LogRecord("app", logging.INFO, __file__, 1, "%s %s", (secret,), None)
    with logcontext.scope():
        logcontext.add_secrets([secret])
        redactor.filter(broken)  # too few arguments: logging would print them raw
    assert secret not in broken.getMessage()
    assert after.getMessage() == f"got {secret}"  # the scope ended: nothing registered

    http = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: GET %s "200"',
        ("https://u:p@h.test/a?q=1",),
        None,
    )
    redactor.filter(http)
    assert http.getMessage() == 'HTTP Request: GET https://h.test/a "200"'
