"""The run engine's observability: log context, spans and metrics around its units of work,
and the receivers that turn engine signals into metrics and run spans.

The engine calls only the wrappers here (a decorator or a `with` line each); everything else
listens to runs.signals. Receivers run inside the engine's transactions, so what they record
is deferred to `on_commit(..., robust=True)`: a rolled-back transition is never counted, and
a failing recorder can never break the engine."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from django.db import transaction
from django.db.models import Count, Min, Q
from django.utils import timezone
from opentelemetry.trace import SpanKind
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from projects.models import Project
from runs.engine.errors import StepError, StepPaused, StepSuperseded
from runs.services.state import node_of
from sparkops import logcontext, metrics, tracing
from workflows.models import Workflow

from .models import Run, RunStep

logger = logging.getLogger("sparkops.engine")

if TYPE_CHECKING:
    from runs.models import Run

P = ParamSpec("P")
R = TypeVar("R")
RunT = TypeVar("RunT", bound="Run")
WAITING = ("pending", "queued")


# --- planning (run_advance_locked) ----------------------------------------------------------------


def run_scope(
    func: Callable[Concatenate[RunT, P], R],
) -> Callable[Concatenate[RunT, P], R]:
    """Wraps `run_advance_locked(run)`: its log lines carry the run, and a run it admits is
    counted as started (with its queue wait) once the transaction commits."""

    @functools.wraps(func)
    def wrapper(run: RunT, *args: P.args, **kwargs: P.kwargs) -> R:
        with logcontext.scope(run_id=str(run.pk), project_id=run.project_id):
            was_waiting = run.status in WAITING
            result = func(run, *args, **kwargs)
            if was_waiting and run.status not in WAITING and run.started_at:
                started = (run.pk, run.project_id, run.workflow_id, run.queued_at, run.started_at)
                transaction.on_commit(lambda: _run_started(*started), robust=True)
            return result

    return wrapper


def _run_started(
    run_id: Any, project_id: Any, workflow_id: Any, queued_at: Any, started_at: Any
) -> None:
    project, workflow = _names(workflow_id)
    metrics.runs_started.labels(project, workflow).inc()
    if queued_at and started_at:
        wait = max((started_at - queued_at).total_seconds(), 0.0)
        metrics.run_queue_wait.labels(project, workflow).observe(wait)
    logger.info(
        "run started",
        extra={"run_id": str(run_id), "project_id": project_id, "workflow": workflow},
    )


def _names(workflow_id: Any) -> tuple[str, str]:
    row = Workflow.objects.filter(pk=workflow_id).values_list("project__slug", "slug").first()
    return (str(row[0]), str(row[1])) if row else ("unknown", "unknown")


# --- executing a step (step_execute) ------------------------------------------------------------


def step_scope(func: Callable[P, R]) -> Callable[P, R]:
    """Wraps `step_execute`: one log scope per step attempt (what `step_span` binds stays on
    every later line of the attempt, its failure or success included), and one trace-context
    scope (the step span stays current while its result is written and its successors sent)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with (
            logcontext.scope(step_id=kwargs.get("step_id"), attempt=kwargs.get("attempt")),
            tracing.context_scope(),
        ):
            return func(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def step_span(step: Any, attempt: int) -> Iterator[Any]:
    """Around the execution of one step attempt: the step span (child of the run span), log
    context, the attempt's duration and queue wait."""
    run = step.run
    logcontext.bind(
        run_id=str(step.run_id), project_id=run.project_id, step=step.node_id, attempt=attempt
    )
    if step.queued_at and step.started_at:
        wait = max((step.started_at - step.queued_at).total_seconds(), 0.0)
        metrics.step_queue_wait.labels(step.type).observe(wait)
    node = _node(run, step.node_id)
    attributes: dict[str, Any] = {
        "sparkops.run.id": str(step.run_id),
        "sparkops.project.id": run.project_id,
        "sparkops.step.node_id": step.node_id,
        "sparkops.step.type": step.type,
        "sparkops.step.attempt": attempt,
    }
    name = f"step {step.node_id}"
    if step.type == "agent":
        name = f"invoke_agent {node.get('agent')}"
        attributes.update(
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": node.get("agent")}
        )
    elif step.type == "tool":
        attributes["gen_ai.tool.name"] = node.get("tool")
    logger.info("step started")
    outcome = "succeeded"
    started = time.perf_counter()
    span = None
    try:
        with tracing.span(
            name, context=_run_context(step.run_id), attributes=attributes, link_current=True
        ) as span:
            try:
                yield span
            except StepPaused:
                outcome = "paused"
                raise
            except StepSuperseded:
                outcome = "superseded"
                tracing.set_attributes(span, {"sparkops.step.superseded": True})
                raise
            except StepError as exc:
                outcome = "failed"
                tracing.set_error(span, exc.type, exc.message)
                raise
            except Exception as exc:
                outcome = "crashed"
                tracing.set_error(span, exc.__class__.__name__, str(exc))
                raise
            finally:
                seconds = time.perf_counter() - started
                metrics.step_duration.labels(step.type, outcome).observe(seconds)
                tracing.set_attributes(span, {"sparkops.step.outcome": outcome})
                logger.info(
                    "step %s",
                    outcome,
                    extra={"outcome": outcome, "duration_ms": round(seconds * 1000)},
                )
    finally:
        # The step's result is written (and its successors are sent) after the span ends:
        # keep it current for the rest of the attempt so those messages carry its context.
        tracing.keep(span)


def _run_context(run_id: Any) -> Any:
    return tracing.run_context(run_id) if tracing.enabled() else None


def _node(run: Any, node_id: str) -> dict[str, Any]:
    try:
        return node_of(run, node_id)
    except KeyError:
        return {}


# --- model and tool calls -------------------------------------------------------------------


class ModelCall:
    """What `model_call` yields: pass the provider's response through `done()`."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def done(self, response: Any) -> Any:
        if self.span is not None:
            tracing.set_attributes(
                self.span,
                {
                    "gen_ai.response.model": response.model,
                    "gen_ai.response.finish_reasons": [response.finish_reason or "unknown"],
                    "gen_ai.usage.input_tokens": response.input_tokens,
                    "gen_ai.usage.output_tokens": response.output_tokens,
                    "sparkops.model.latency_ms": round(response.latency_ms, 2),
                    "sparkops.model.tool_calls": [call.name for call in response.tool_calls],
                },
            )
        return response


@contextlib.contextmanager
def model_call(provider: str, request: Any) -> Iterator[ModelCall]:
    """Around one provider call of an agent step: a `chat {model}` client span (GenAI
    conventions) and the error counter (successful calls are counted from their llm.call
    events, once charged)."""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the older name, still read by several backends
        "gen_ai.request.model": request.model,
        "gen_ai.request.temperature": request.temperature,
        "gen_ai.request.max_tokens": request.max_tokens,
        "gen_ai.output.type": "json" if request.response_format else "text",
    }
    with tracing.span(f"chat {request.model}", kind=SpanKind.CLIENT, attributes=attributes) as span:
        try:
            yield ModelCall(span)
        except Exception as exc:
            error_type = str(getattr(exc, "error_type", None) or exc.__class__.__name__)
            metrics.model_call_errors.labels(provider, request.model, error_type).inc()
            tracing.set_error(span, error_type, str(getattr(exc, "detail", exc)))
            raise


def tool_call(func: Callable[P, R]) -> Callable[P, R]:
    """Wraps `call_tool(*, tool, ...)`: an `execute_tool {name}` span (GenAI conventions).
    Latency and errors are counted from the tool.call events."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not tracing.enabled():
            return func(*args, **kwargs)
        tool: Any = kwargs["tool"]
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool.name,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.description": (tool.description or "")[:200] or None,
            "sparkops.tool.kind": getattr(tool, "kind", None),
            "sparkops.agent.iteration": kwargs.get("iteration"),
        }
        with tracing.span(f"execute_tool {tool.name}", attributes=attributes) as span:
            try:
                result = func(*args, **kwargs)
            except Exception as exc:
                tracing.set_error(span, str(getattr(exc, "type", exc.__class__.__name__)), str(exc))
                raise
            outcome: Any = result  # a ToolResult (runs.engine.toolcalls)
            tracing.set_attributes(
                span,
                {
                    "sparkops.tool.ok": outcome.ok,
                    "http.response.status_code": outcome.http_status,
                    "sparkops.tool.latency_ms": round(outcome.latency_ms, 2),
                },
            )
            if not outcome.ok:
                tracing.set_error(span, "tool_error", outcome.error or "")
            return result

    return wrapper


# --- signal receivers (connected in runs.apps) ------------------------------------------------

COUNTED_EVENTS = {"llm.call", "tool.call", "policy.decision"}


def on_events_appended(sender: Any, run_id: Any, events: list[Any], **kwargs: Any) -> None:
    counted = [
        (event.type, event.payload)
        for event in events
        if event.type in COUNTED_EVENTS
        or (event.type == "run.status" and (event.payload or {}).get("status") == "pending")
    ]
    if counted:
        transaction.on_commit(lambda: metrics.record_events(counted), robust=True)


def on_usage_charged(sender: Any, run: Any, cost: Any, **kwargs: Any) -> None:
    if cost:
        project_id = run.project_id
        transaction.on_commit(lambda: _spend(project_id, cost), robust=True)


def _spend(project_id: Any, cost: Any) -> None:
    slug = Project.objects.filter(pk=project_id).values_list("slug", flat=True).first()
    metrics.spend.labels(str(slug or project_id)).inc(float(cost))


def on_run_finished(sender: Any, run: Any, **kwargs: Any) -> None:
    error = run.error if isinstance(run.error, dict) else None
    finished = {
        "run_id": run.pk,
        "workflow_id": run.workflow_id,
        "project_id": run.project_id,
        "status": str(run.status),
        "trigger": str(run.trigger),
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost": run.cost,
        "error_type": (error or {}).get("type"),
        "error": (error or {}).get("message"),
    }
    transaction.on_commit(lambda: _run_finished(**finished), robust=True)


def _run_finished(
    *,
    run_id: Any,
    workflow_id: Any,
    project_id: Any,
    status: str,
    started_at: Any,
    created_at: Any,
    finished_at: Any,
    error: str | None,
    error_type: str | None,
    **totals: Any,
) -> None:
    project, workflow = _names(workflow_id)
    metrics.runs_finished.labels(project, workflow, status).inc()
    if started_at and finished_at:
        seconds = max((finished_at - started_at).total_seconds(), 0.0)
        metrics.run_duration.labels(project, workflow, status).observe(seconds)
    if tracing.enabled() and finished_at:
        tracing.emit_run_span(
            run_id=run_id,
            name=f"invoke_workflow {workflow}",
            start=created_at,
            end=finished_at,
            attributes={
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.workflow.name": workflow,
                "gen_ai.usage.input_tokens": totals["input_tokens"],
                "gen_ai.usage.output_tokens": totals["output_tokens"],
                "sparkops.run.id": str(run_id),
                "sparkops.run.status": status,
                "sparkops.run.trigger": totals["trigger"],
                "sparkops.run.cost_usd": float(totals["cost"] or 0),
                "sparkops.project": project,
                "sparkops.project.id": project_id,
                "error.type": error_type,
            },
            error=(error or error_type) if status in ("failed", "timed_out") else None,
        )
    logger.info(
        "run %s",
        status,
        extra={"run_id": str(run_id), "project_id": project_id, "workflow": workflow},
    )


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time (two indexed queries)."""

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "sparkops_runs_active", "Runs not finished yet, by status.", labels=["status"]
        )
        counts = dict(
            Run.objects.active()
            .order_by()
            .values_list("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        for status in Run.ACTIVE_STATUSES:
            active.add_metric([str(status)], counts.get(status, 0))
        yield active

        now = timezone.now()
        ready = RunStep.objects.filter(status=RunStep.Status.QUEUED).filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
        )
        backlog = ready.aggregate(n=Count("pk"), oldest=Min("queued_at"))
        yield GaugeMetricFamily(
            "sparkops_steps_queued",
            "Step attempts queued and due (waiting for a worker).",
            value=backlog["n"] or 0,
        )
        oldest = backlog["oldest"]
        yield GaugeMetricFamily(
            "sparkops_steps_queued_oldest_age_seconds",
            "Age of the oldest due, queued step attempt (0 when none).",
            value=max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
        )
