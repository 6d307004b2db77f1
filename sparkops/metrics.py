"""Prometheus metrics: the named metric objects (import and use them from anywhere), what the
engine's signals record into them, and the `/metrics` exposition.

Two kinds of numbers (README, "Observability" says why):

- Things that *happen* (a run finishes, a model call is charged, a tool answers) are counters
  and histograms recorded by the process where they happen, in prometheus-client's
  multiprocess mode: every gunicorn and Celery process of a host writes its own files under
  `PROMETHEUS_MULTIPROC_DIR` (settings sets it before this module is imported) and `/metrics`
  adds them up. Engine events are recorded after their transaction commits, so a rolled-back
  transition is never counted.
- Things that *are* (runs active by status, steps waiting in the queue) are gauges read from the
  database at scrape time: the database is the truth, and they stay right across restarts.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import shutil
import time
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Seconds. Steps and model calls range from milliseconds (transforms, cached answers) to
# minutes (long agent loops); runs up to an hour (the default run timeout).
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# --- runs --------------------------------------------------------------------------------------
runs_created = Counter(
    "sparkops_runs_created", "Runs created, by how they were triggered.", ["trigger"]
)
runs_started = Counter(
    "sparkops_runs_started",
    "Runs admitted and started (queued → running).",
    ["project", "workflow"],
)
runs_finished = Counter(
    "sparkops_runs_finished",
    "Runs that reached a final status.",
    ["project", "workflow", "status"],
)
run_duration = Histogram(
    "sparkops_run_duration_seconds",
    "Run wall time from start to finish.",
    ["project", "workflow", "status"],
    buckets=SLOW_BUCKETS,
)
run_queue_wait = Histogram(
    "sparkops_run_queue_wait_seconds",
    "Time a run waited between queued and started (planner backlog, concurrency limits).",
    ["project", "workflow"],
    buckets=SLOW_BUCKETS,
)

# --- steps -------------------------------------------------------------------------------------
step_duration = Histogram(
    "sparkops_step_duration_seconds",
    "Execution time of one step attempt, by node type and outcome "
    "(succeeded, failed, superseded, crashed).",
    ["type", "outcome"],
    buckets=FAST_BUCKETS,
)
step_queue_wait = Histogram(
    "sparkops_step_queue_wait_seconds",
    "Time a step attempt waited between queued and started (worker backlog; includes retry "
    "backoff).",
    ["type"],
    buckets=FAST_BUCKETS,
)

# --- model calls -------------------------------------------------------------------------------
model_calls = Counter(
    "sparkops_model_calls", "Model calls charged, by provider and model.", ["provider", "model"]
)
model_call_errors = Counter(
    "sparkops_model_call_errors",
    "Model calls that failed (no answer to charge), by provider, model and error type.",
    ["provider", "model", "error_type"],
)
model_tokens = Counter(
    "sparkops_model_tokens",
    "Tokens used by model calls; `type` is input or output (gen_ai.token.type).",
    ["provider", "model", "type"],
)
model_cost = Counter(
    "sparkops_model_cost_usd", "Cost of model calls in USD.", ["provider", "model"]
)
model_call_duration = Histogram(
    "sparkops_model_call_duration_seconds",
    "Model call latency as measured by the provider adapter.",
    ["provider", "model"],
    buckets=FAST_BUCKETS,
)
model_calls_unpriced = Counter(
    "sparkops_model_calls_unpriced",
    "Model calls whose model has no price (charged 0; add a ModelPrice).",
    ["provider", "model"],
)

# --- tools -------------------------------------------------------------------------------------
tool_calls = Counter(
    "sparkops_tool_calls", "Tool calls, by tool and outcome (ok or error).", ["tool", "outcome"]
)
tool_call_duration = Histogram(
    "sparkops_tool_call_duration_seconds",
    "Tool call latency (calls that were executed).",
    ["tool"],
    buckets=FAST_BUCKETS,
)

# --- governance ----------------------------------------------------------------------------------
policy_denials = Counter(
    "sparkops_policy_denials",
    "Policy decisions that denied (enforced or audit-only), by evaluation point and mode.",
    ["point", "mode"],
)
spend = Counter(
    "sparkops_spend_usd",
    "Cost charged to a project's budgets (model calls), in USD.",
    ["project"],
)

# --- outbound webhooks (incremented by the webhook sender) -------------------------------------
webhook_deliveries = Counter(
    "sparkops_webhook_deliveries",
    "Outbound webhook delivery attempts, by outcome (e.g. delivered, failed, retrying, gave_up).",
    ["outcome"],
)


# --- web tier ----------------------------------------------------------------------------------
cache_errors = Counter(
    "sparkops_cache_errors",
    "Cache operations that failed open because Redis was unreachable (sparkops.cache).",
    ["operation"],
)
streams_refused = Counter(
    "sparkops_streams_refused",
    "Event streams refused with 429, by the limit that was full (user or process).",
    ["limit"],
)

# --- recording from engine events ------------------------------------------------------------


def record_events(events: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Count committed run events: (type, payload) pairs."""
    for type, payload in events:
        try:
            _record_event(type, payload or {})
        except Exception:  # a metric must never break the engine
            logger.exception("could not record metrics for a %s event", type)


def _record_event(type: str, payload: dict[str, Any]) -> None:
    if type == "llm.call":
        provider = str(payload.get("provider") or "unknown")
        model = str(payload.get("model") or "unknown")
        model_calls.labels(provider, model).inc()
        model_tokens.labels(provider, model, "input").inc(int(payload.get("input_tokens") or 0))
        model_tokens.labels(provider, model, "output").inc(int(payload.get("output_tokens") or 0))
        model_cost.labels(provider, model).inc(_usd(payload.get("cost")))
        if payload.get("latency_ms") is not None:
            model_call_duration.labels(provider, model).observe(float(payload["latency_ms"]) / 1000)
        if payload.get("price_unknown"):
            model_calls_unpriced.labels(provider, model).inc()
    elif type == "tool.call":
        tool = str(payload.get("tool") or "unknown")
        tool_calls.labels(tool, "ok" if payload.get("ok") else "error").inc()
        if payload.get("latency_ms") is not None:
            tool_call_duration.labels(tool).observe(float(payload["latency_ms"]) / 1000)
    elif type == "policy.decision":
        if is_denial(payload):
            point = str(payload.get("point") or "unknown")
            policy_denials.labels(point, str(payload.get("mode") or "enforce")).inc()
    elif type == "run.status" and payload.get("status") == "pending":
        runs_created.labels(str(payload.get("trigger") or "unknown")).inc()


def is_denial(payload: dict[str, Any]) -> bool:
    outcome = str(payload.get("outcome") or payload.get("decision") or "").lower()
    return outcome in {"deny", "denied", "block", "blocked"}


def _usd(value: Any) -> float:
    try:
        return float(Decimal(str(value))) if value not in (None, "") else 0.0
    except (InvalidOperation, ValueError):
        return 0.0


# --- exposition ----------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def mark_process_dead(pid: int | None = None) -> None:
    """A process is exiting: drop its live-gauge files (counters and histograms stay, so the
    totals survive the process)."""
    path = multiprocess_dir()
    if path:
        multiprocess.mark_process_dead(pid or os.getpid(), path)


def reset_multiprocess_dir() -> str | None:
    """Empty the multiprocess directory. Only while no process of the platform is running
    (`make run` calls it before starting them): files are keyed by pid, and a new process
    with a reused pid would otherwise carry on from a dead one's values."""
    path = multiprocess_dir()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)
    return path


# Collectors read at scrape time, from the database (registered by the apps that own the rows:
# runs adds its gauges in RunsConfig.ready; this module knows no app).
_scrape_collectors: list[Collector] = []


def add_scrape_collector(collector: Collector) -> None:
    if collector not in _scrape_collectors:
        _scrape_collectors.append(collector)


def exposition() -> bytes:
    """The text exposition: every process's metrics (multiprocess mode) or this process's,
    plus the database gauges."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        events = generate_latest(registry)
    else:
        events = generate_latest(REGISTRY)
    database = CollectorRegistry()
    for collector in _scrape_collectors:
        database.register(collector)
    return events + generate_latest(database)


def _client_allowed(request: HttpRequest) -> bool:
    """The token, or an address the operator listed. Nothing is allowed by default: on a host
    with a reverse proxy every client arrives from 127.0.0.1, so "local" means nothing."""
    token = settings.SPARKOPS_METRICS_TOKEN
    if token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return True
    if not settings.SPARKOPS_METRICS_ALLOW:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    networks = [ipaddress.ip_network(n, strict=False) for n in settings.SPARKOPS_METRICS_ALLOW]
    return any(address.version == net.version and address in net for net in networks)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: `Authorization: Bearer <SPARKOPS_METRICS_TOKEN>`, or a client address
    inside SPARKOPS_METRICS_ALLOW (empty by default). Anything else is a 403."""
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            {"type": "method_not_allowed", "detail": "Use GET."},
            status=405,
            headers={"Allow": "GET"},
        )
    if not _client_allowed(request):
        return JsonResponse(
            {
                "type": "permission_denied",
                "detail": "Metrics need `Authorization: Bearer <SPARKOPS_METRICS_TOKEN>` or a "
                "client address in SPARKOPS_METRICS_ALLOW.",
            },
            status=403,
        )
    started = time.monotonic()
    body = exposition()
    logger.debug("metrics rendered in %.1f ms", (time.monotonic() - started) * 1000)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
