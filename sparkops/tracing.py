"""OpenTelemetry tracing: run → step → model call / tool call, with the GenAI semantic
conventions. Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) or
`LANGWATCH_API_KEY` is set; when off, `enabled()` is False and every helper returns at once
(no SDK is even imported).

One run is one trace, whatever process or Celery task works on it: the trace id *is* the run's
UUID and the run span's id is derived from it, so a step executed by any worker, a re-delivered
task or a sweeper re-send all land under the same run span without storing anything on the Run.
The run span itself is emitted when the run finishes (start = created, end = finished). Celery
messages also carry the W3C `traceparent` of whatever span was current when they were sent
(a step span, when a finishing step schedules the next one); the receiving step span links to
it ("scheduled by").

The OTLP exporter sends HTTP itself (through `requests`), outside sparkops.egress: its
endpoints come from the operator's environment, never from users, so the SSRF rules that
egress enforces for user-supplied URLs do not apply (README, "Observability")."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.conf import settings
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

logger = logging.getLogger(__name__)

INSTRUMENTATION = "sparkops"

_lock = threading.Lock()
_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider once configured
_tracer: trace.Tracer | None = None
# (trace_id, span_id) the id generator must hand out next (the run span's fixed ids).
_forced_ids: ContextVar[tuple[int, int] | None] = ContextVar("sparkops_forced_ids", default=None)
# Context tokens of the Celery tasks running now, by task id (attached in task_prerun).
_task_tokens: dict[str, Any] = {}


def enabled() -> bool:
    return _tracer is not None


# --- set-up ---------------------------------------------------------------------------------


def exporters_from_settings() -> list[Any]:
    """The OTLP/HTTP exporters the settings ask for (empty: tracing stays off)."""
    if settings.OTEL_SDK_DISABLED:
        return []
    exporters: list[Any] = []
    endpoint = settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    if not endpoint and settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        # The spec: a generic endpoint gets the signal path appended; a per-signal one is used
        # as is.
        endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT.rstrip("/") + "/v1/traces"
    if not endpoint and not settings.LANGWATCH_API_KEY:
        return exporters
    # The OTLP exporter (protobuf, HTTP session) loads only when an endpoint is configured.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint:
        exporters.append(OTLPSpanExporter(endpoint=endpoint))
    if settings.LANGWATCH_API_KEY:
        authorization = f"Bearer {settings.LANGWATCH_API_KEY}"
        langwatch = OTLPSpanExporter(
            endpoint=settings.LANGWATCH_ENDPOINT.rstrip("/") + "/api/otel/v1/traces",
            headers={"Authorization": authorization},
        )
        # The exporter also sends OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, which are meant for the
        # collector (its API key, say): LangWatch gets its own Authorization and nothing else.
        client = getattr(langwatch, "_client", None)
        if client is not None and isinstance(getattr(client, "_headers", None), dict):
            client._headers = {
                key: value
                for key, value in client._headers.items()
                if key.lower() in {"user-agent", "content-type", "content-encoding"}
            }
            client._headers["authorization"] = authorization
        exporters.append(langwatch)
    return exporters


def configure_from_settings() -> bool:
    """Called once per process at start-up (runs.apps). True when tracing is on."""
    exporters = exporters_from_settings()
    if exporters:
        setup(exporters)
    return bool(exporters)


def setup(exporters: Sequence[Any], *, batch: bool = True) -> Any:
    """Install a tracer provider exporting to `exporters` (tests pass an in-memory exporter and
    `batch=False`). Replaces any earlier set-up of this module. Returns the provider."""
    global _provider, _tracer
    # The SDK loads only when tracing is set up; with it off, the API's no-op tracer suffices.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create(
        {
            "service.name": settings.OTEL_SERVICE_NAME,
            "service.version": settings.SPARKOPS_VERSION,
        }
    )
    provider = TracerProvider(resource=resource, id_generator=_run_id_generator())
    for exporter in exporters:
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
    with _lock:
        previous = _provider
        _provider = provider
        _tracer = provider.get_tracer(INSTRUMENTATION, settings.SPARKOPS_VERSION)
    if previous is not None:
        previous.shutdown()
    return provider


def shutdown() -> None:
    """Flush and turn tracing off (tests; process exit is handled by the SDK's atexit)."""
    global _provider, _tracer
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_millis: int = 10_000) -> bool:
    provider = _provider
    return provider.force_flush(timeout_millis) if provider is not None else True


def _run_id_generator() -> Any:
    """Random ids, except while the run span is being started: then the run's fixed ids."""
    # The SDK loads only when tracing is set up (see setup()).
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunIdGenerator(RandomIdGenerator):
        def generate_span_id(self) -> int:
            forced = _forced_ids.get()
            return forced[1] if forced else super().generate_span_id()

        def generate_trace_id(self) -> int:
            forced = _forced_ids.get()
            return forced[0] if forced else super().generate_trace_id()

    return RunIdGenerator()


# --- runs as traces ---------------------------------------------------------------------------


def run_trace_id(run_id: Any) -> int:
    """The run's UUID as a 128-bit trace id (search a tracing backend by run id)."""
    return uuid.UUID(str(run_id)).int or 1


def run_span_id(run_id: Any) -> int:
    digest = hashlib.sha256(b"sparkops-run-span:" + uuid.UUID(str(run_id)).bytes).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _sampled(trace_id: int) -> bool:
    provider = _provider
    if provider is None:
        return False
    result = provider.sampler.should_sample(None, trace_id, "run")
    return result.decision.is_sampled()


def run_context(run_id: Any) -> otel_context.Context:
    """A context whose current span is the run's (remote) span: start step spans in it."""
    trace_id = run_trace_id(run_id)
    flags = TraceFlags(TraceFlags.SAMPLED if _sampled(trace_id) else TraceFlags.DEFAULT)
    parent = SpanContext(
        trace_id=trace_id, span_id=run_span_id(run_id), is_remote=True, trace_flags=flags
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


def emit_run_span(
    *,
    run_id: Any,
    name: str,
    start: datetime,
    end: datetime,
    attributes: dict[str, Any],
    error: str | None = None,
) -> None:
    """The root span of a finished run, with the run's fixed trace and span ids."""
    tracer = _tracer
    if tracer is None:
        return
    token = _forced_ids.set((run_trace_id(run_id), run_span_id(run_id)))
    try:
        span = tracer.start_span(
            name,
            context=otel_context.Context(),
            kind=SpanKind.INTERNAL,
            attributes=_clean(attributes),
            start_time=_ns(start),
        )
    finally:
        _forced_ids.reset(token)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=max(_ns(end), _ns(start)))


# --- spans ----------------------------------------------------------------------------------


@contextlib.contextmanager
def span(
    name: str,
    *,
    context: otel_context.Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
    link_current: bool = False,
) -> Iterator[Span | None]:
    """A span made current for the block, or None when tracing is off. Exceptions are not
    recorded here: callers decide what counts as an error (`set_error`). With `link_current`,
    the span links to the span current before it (e.g. the one a Celery message carried)."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    links = []
    if link_current:
        previous = trace.get_current_span().get_span_context()
        if previous.is_valid:
            links.append(Link(previous, {"sparkops.link": "scheduled_by"}))
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=_clean(attributes or {}),
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        yield current


@contextlib.contextmanager
def context_scope() -> Iterator[None]:
    """Whatever `keep()` makes current inside the block is undone when it closes."""
    if _tracer is None:
        yield
        return
    token = otel_context.attach(otel_context.get_current())
    try:
        yield
    finally:
        otel_context.detach(token)


def keep(target: Span | None) -> None:
    """Leave `target` current (even ended) until the enclosing `context_scope()` closes: tasks
    sent after it, such as the next steps a finished step schedules, carry its traceparent."""
    if target is not None:
        otel_context.attach(trace.set_span_in_context(target))


def set_attributes(target: Span | None, attributes: dict[str, Any]) -> None:
    if target is not None:
        target.set_attributes(_clean(attributes))


def set_error(target: Span | None, error_type: str, message: str = "") -> None:
    if target is not None:
        target.set_attribute("error.type", error_type)
        target.set_status(Status(StatusCode.ERROR, message[:500] or error_type))


def current_context() -> Any:
    """The current trace context (None when tracing is off), to carry to work done later in
    this process as a message's headers carry it to another (`attached`)."""
    return otel_context.get_current() if _tracer is not None else None


@contextlib.contextmanager
def attached(carried: Any) -> Iterator[None]:
    """Make a context `current_context()` returned current for the block."""
    if _tracer is None or carried is None:
        yield
        return
    token = otel_context.attach(carried)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current recording span, for log lines."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


# --- Celery: W3C trace context in the message headers ------------------------------------------


class _RequestGetter(Getter[Any]):
    """Reads propagation fields from a Celery task request (custom message headers become
    request attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)
        if value is None:
            return None
        return [value] if isinstance(value, str) else list(value)

    def keys(self, carrier: Any) -> list[str]:
        return []


_GETTER = _RequestGetter()


def inject_headers(headers: dict[str, Any] | None) -> None:
    """before_task_publish: put the current span's `traceparent` in the message headers."""
    if _tracer is None or headers is None:
        return
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)


def task_started(task_id: str | None, request: Any) -> None:
    """task_prerun: make the context the message carried current for the task."""
    if _tracer is None or not task_id or request is None:
        return
    extracted = propagate.extract(request, getter=_GETTER)
    if trace.get_current_span(extracted).get_span_context().is_valid:
        _task_tokens[task_id] = otel_context.attach(extracted)


def task_finished(task_id: str | None) -> None:
    token = _task_tokens.pop(task_id, None) if task_id else None
    if token is not None:
        with contextlib.suppress(Exception):  # detached in another context: nothing to undo
            otel_context.detach(token)


# --- helpers --------------------------------------------------------------------------------


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OTel attributes are str/bool/int/float or lists of one of those; drop None."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = [v if isinstance(v, (str, bool, int, float)) else str(v) for v in value]
        else:
            out[key] = str(value)
    return out
