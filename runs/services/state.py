"""Run state under the run lock, and what a run pinned: locking the run row, finishing a run,
the pinned version's snapshot and its nodes, retry and timeout settings, tool lookup. Every
write here is guarded (a row lock, or a conditional UPDATE on the expected status and attempt),
so two workers can never both move the same run or step. Lock order, to stay deadlock-free:
the run row first, then its step rows."""

from __future__ import annotations

import random
import socket
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from runs.engine import planner
from runs.models import Run, RunEvent, RunStep
from sparkops.db import select_models
from sparkops.nul import strip_nul
from tools.mcp_services import mcp_tool_named
from tools.models import Tool
from workflows.definition import child_workflows
from workflows.models import WorkflowVersion

from . import hooks
from .events import event_append, events_append

WORKER_NAME = f"{socket.gethostname()}:{threading.get_native_id()}"


def lock_run(run_id: Any) -> Run | None:
    return Run.objects.select_for_update().filter(pk=run_id).first()


@lru_cache(maxsize=256)
def _snapshot(version_id: int) -> dict[str, Any]:
    snapshot: dict[str, Any] = WorkflowVersion.objects.values_list("snapshot", flat=True).get(
        pk=version_id
    )
    return snapshot


def version_snapshot(run: Run) -> dict[str, Any]:
    """The pinned version's snapshot. Versions are immutable and their ids never reused
    (PostgreSQL sequences; SQLite AUTOINCREMENT), so each process reads and parses one once
    instead of per step. Treat the result as read-only."""
    return _snapshot(run.version_id)


@dataclass(frozen=True)
class Shape:
    """What the engine asks of a pinned definition on every step, worked out once per version
    and process (like the snapshot itself): the planner's nodes, each raw node by id, the
    nodes something depends on, whether any node starts child runs. Read-only."""

    nodes: tuple[planner.NodeSpec, ...]
    by_id: dict[str, dict[str, Any]]
    with_successors: frozenset[str]
    has_children: bool


@lru_cache(maxsize=256)
def _shape(version_id: int) -> Shape:
    definition = _snapshot(version_id)["definition"]
    raw = definition.get("nodes", [])
    return Shape(
        nodes=tuple(planner.nodes_of(definition)),
        by_id={node["id"]: node for node in raw},
        with_successors=frozenset(dep for node in raw for dep in node.get("depends_on") or ()),
        # A child run comes from a `workflow` node, a map over one or a loop's body.
        has_children=bool(child_workflows(definition))
        or any(node.get("type") in ("loop", "map") for node in raw),
    )


def version_shape(run: Run) -> Shape:
    return _shape(run.version_id)


def node_of(run: Run, node_id: str) -> dict[str, Any]:
    """The node a step runs. An item of a `map` (`<map>[<index>]`) runs the map's item node
    with the map's `retry` and `timeout_seconds`."""
    node = version_shape(run).by_id.get(node_id)
    if node is not None:
        return node
    parent, index = split_item_id(node_id)
    if parent is not None:
        return item_node(node_of(run, parent), index)
    raise KeyError(node_id)


def item_id(map_id: str, index: int) -> str:
    return f"{map_id}[{index}]"


def split_item_id(node_id: str) -> tuple[str | None, int]:
    """(map id, index) of an item step's node id; (None, -1) for any other."""
    if node_id.endswith("]") and "[" in node_id:
        parent, _, index = node_id[:-1].rpartition("[")
        if index.isdigit():
            return parent, int(index)
    return None, -1


def item_node(map_node: dict[str, Any], index: int) -> dict[str, Any]:
    node = {**map_node["node"], "id": item_id(map_node["id"], index)}
    for key in ("retry", "timeout_seconds"):
        if key in map_node:
            node[key] = map_node[key]
    return node


def retry_policy(run: Run, node: dict[str, Any], error: Any = None) -> dict[str, Any]:
    """The node's `retry` over the workflow's `retry_policy`. A provider's rate limit (429) or
    server error (5xx) is retried by default: on a node without a `retry` block it gets at least
    SPARKOPS_PROVIDER_RETRY_ATTEMPTS attempts (a node's own `retry` block, even one of a single
    attempt, is taken as written)."""
    policy = dict(version_snapshot(run).get("retry_policy") or {})
    policy.update(node.get("retry") or {})
    attempts = int(policy.get("max_attempts", 1))
    if "retry" not in node and error is not None and error.details.get("transient"):
        attempts = max(attempts, settings.SPARKOPS_PROVIDER_RETRY_ATTEMPTS)
    return {
        "max_attempts": attempts,
        "backoff_seconds": float(policy.get("backoff_seconds", 2)),
        "max_backoff_seconds": float(policy.get("max_backoff_seconds", 300)),
    }


def backoff_delay(policy: dict[str, Any], failures: int, retry_after: Any = None) -> float:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a factor in [0.5, 1]; never
    shorter than the `Retry-After` the provider answered (itself capped by the policy's cap)."""
    base: float = policy["backoff_seconds"] * (2 ** max(failures - 1, 0))
    cap: float = policy["max_backoff_seconds"]
    delay = min(base, cap) * random.uniform(0.5, 1.0)  # noqa: S311
    if isinstance(retry_after, int | float) and retry_after > 0:
        delay = max(delay, min(float(retry_after), cap))
    return delay


def step_timeout(node: dict[str, Any]) -> float:
    return float(node.get("timeout_seconds") or settings.SPARKOPS_STEP_TIMEOUT)


def has_successors(run: Run, node_id: str) -> bool:
    return node_id in version_shape(run).with_successors


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


# A run's deadline works like Temporal's workflow execution timeout: `timeout_seconds` after the
# run started, the run is over. The engine checks it where it acts (planning, a step's start,
# a step's result, a pause), a step's calls wait at most until it, and the sweeper times out
# runs where nothing acts (waiting for an approval, steps stuck in a queue). A result that
# arrives after the deadline is discarded, whatever it is: the run ends `timed_out`.
RUN_TIMED_OUT = {"type": "timed_out", "message": "The run passed its deadline (timeout_seconds)."}


def past_deadline(run: Run, now: datetime | None = None) -> bool:
    return run.deadline is not None and run.deadline <= (now or timezone.now())


def time_out_locked(run: Run, *, events: list[dict[str, Any]] | None = None) -> None:
    """Call with the run row locked, on an unfinished run past its deadline: it ends
    `timed_out`, its unfinished steps cancelled (a running one stops at its next checkpoint,
    its result discarded). `events` (the caller's) are written first."""
    run.cancel_requested = True
    run.save(update_fields=["cancel_requested"])
    finish_run(run, Run.Status.TIMED_OUT, error=dict(RUN_TIMED_OUT), events=events)


def step_event(*, step: RunStep, attempt: int, type: str, payload: dict[str, Any]) -> None:
    event_append(step.run_id, type, payload, node_id=step.node_id, attempt=attempt)


def _usable_tool(project_id: Any, name: str) -> Tool | None:
    """The tool `Tool.objects.usable_in(project_id)` names `name`, as SQL written once
    (sparkops.db.select_models: every step reads it). The project's own shadows a global one of
    the same name."""
    project = Tool._meta.get_field("project").get_db_prep_value(project_id, connection)
    found = select_models(
        Tool,
        "name = %s AND (project_id = %s OR is_global = %s)",
        [name, project, True],
        order_by="is_global, id",
        limit=1,
    )
    return found[0] if found else None


def find_tool(
    project_id: Any, name: str, cache: dict[str, Any] | None = None, *, as_of: Any = None
) -> Any:
    """The tool a node or a model names, as the project sees it (its own or a global one);
    None when there is none. With `cache`, each name is read once. An MCP server's tool is
    the one of the snapshot current at `as_of` (the run's start: runs pin what they use)."""
    if cache is not None and name in cache:
        return cache[name]
    tool: Any = _usable_tool(project_id, name)
    if tool is None:  # `<server>__<tool>`: a tool of one of the project's MCP servers
        tool = mcp_tool_named(project_id, name, as_of=as_of)
    if cache is not None:
        cache[name] = tool
    return tool
