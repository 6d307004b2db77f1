"""Run state under the run lock, and what a run pinned: locking the run row, finishing a run,
the pinned version's snapshot and its nodes, retry and timeout settings, tool lookup. Every
write here is guarded (a row lock, or a conditional UPDATE on the expected status and attempt),
so two workers can never both move the same run or step. Lock order, to stay deadlock-free:
the run row first, then its step rows."""

from __future__ import annotations

import random
import socket
import threading
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.utils import timezone

from runs.models import Run, RunEvent, RunStep
from sparkops.nul import strip_nul
from tools.models import Tool
from workflows.models import WorkflowVersion

from . import hooks
from .events import event_append, events_append

WORKER_NAME = f"{socket.gethostname()}:{threading.get_native_id()}"


def lock_run(run_id: Any) -> Run | None:
    return Run.objects.select_for_update().filter(pk=run_id).first()


@lru_cache(maxsize=256)
def _snapshot(version_id: int) -> dict[str, Any]:
    return WorkflowVersion.objects.values_list("snapshot", flat=True).get(pk=version_id)


def version_snapshot(run: Run) -> dict[str, Any]:
    """The pinned version's snapshot. Versions are immutable and their ids never reused
    (PostgreSQL sequences; SQLite AUTOINCREMENT), so each process reads and parses one once
    instead of per step. Treat the result as read-only."""
    return _snapshot(run.version_id)


def node_of(run: Run, node_id: str) -> dict[str, Any]:
    for node in version_snapshot(run)["definition"]["nodes"]:
        if node["id"] == node_id:
            return node
    raise KeyError(node_id)


def retry_policy(run: Run, node: dict[str, Any]) -> dict[str, Any]:
    policy = dict(version_snapshot(run).get("retry_policy") or {})
    policy.update(node.get("retry") or {})
    return {
        "max_attempts": int(policy.get("max_attempts", 1)),
        "backoff_seconds": float(policy.get("backoff_seconds", 2)),
        "max_backoff_seconds": float(policy.get("max_backoff_seconds", 300)),
    }


def backoff_delay(policy: dict[str, Any], failures: int) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a factor in [0.5, 1]."""
    base = policy["backoff_seconds"] * (2 ** max(failures - 1, 0))
    return min(base, policy["max_backoff_seconds"]) * random.uniform(0.5, 1.0)  # noqa: S311


def step_timeout(node: dict[str, Any]) -> float:
    return float(node.get("timeout_seconds") or settings.SPARKOPS_STEP_TIMEOUT)


def has_successors(run: Run, node_id: str) -> bool:
    return any(
        node_id in (node.get("depends_on") or ())
        for node in version_snapshot(run)["definition"]["nodes"]
    )


def finish_run(
    run: Run,
    status: str,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> None:
    """Call with the run row locked. Cancels every unfinished step (a running one stops at its
    next checkpoint and its result is discarded) and records the outcome."""
    now = timezone.now()
    events = list(events or [])
    unfinished = list(
        RunStep.objects.filter(run=run)
        .exclude(status__in=RunStep.FINISHED_STATUSES)
        .values_list("node_id", "status")
    )
    if unfinished:
        RunStep.objects.filter(run=run).exclude(status__in=RunStep.FINISHED_STATUSES).update(
            status=RunStep.Status.CANCELLED, finished_at=now, state=None
        )
        events += [
            {
                "type": RunEvent.Type.STEP_STATUS,
                "node_id": node_id,
                "payload": {"status": "cancelled", "from": previous},
            }
            for node_id, previous in unfinished
        ]
    started = run.started_at or run.created_at
    run.status = status
    run.output = strip_nul(output)
    run.error = strip_nul(error)
    run.finished_at = now
    run.duration_ms = int((now - started).total_seconds() * 1000)
    run.save(update_fields=["status", "output", "error", "finished_at", "duration_ms"])
    events.append(
        {
            "type": RunEvent.Type.RUN_STATUS,
            "payload": {"status": status, **({"error": error} if error else {})},
        }
    )
    events_append(run.pk, events)
    hooks.run_finished(run)


def step_event(*, step: RunStep, attempt: int, type: str, payload: dict[str, Any]) -> None:
    event_append(step.run_id, type, payload, node_id=step.node_id, attempt=attempt)


def find_tool(project_id: Any, name: str, cache: dict[str, Any] | None = None) -> Any:
    """The tool a node or a model names, as the project sees it (its own or a global one);
    None when there is none. With `cache`, each name is read once."""
    if cache is not None and name in cache:
        return cache[name]
    tool = Tool.objects.usable_in(project_id).filter(name=name).first()
    if cache is not None:
        cache[name] = tool
    return tool
