"""Planning a run: admission (concurrency limits), the ready-node loop (skip, wait for an
approval, run inline or queue each ready node), and finishing the run when nothing is left.
Call `run_advance_locked` with the run row locked."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from projects.secrets import SecretBag
from runs import observability
from runs.engine import executors, planner
from runs.engine.checkpoint import InlineCheckpoint
from runs.engine.context import referenced, step_states, template_context
from runs.engine.errors import StepError
from runs.models import Run, RunEvent, RunStep
from sparkops import logcontext, tracing
from sparkops.errors import SparkOpsError
from sparkops.nul import strip_nul
from sparkops.templating import TemplateError, evaluate_condition, render_value
from workflows.models import Workflow

from . import dispatch, policy_hooks
from .dispatch import send_advance, send_child_start, send_step
from .events import collecting as events_collecting
from .events import events_append, events_append_starting, queue_steps
from .failures import oversized, record_failure, redacted
from .state import (
    WORKER_NAME,
    find_tool,
    finish_run,
    item_id,
    item_node,
    lock_run,
    node_of,
    past_deadline,
    step_timeout,
    time_out_locked,
    version_shape,
    version_snapshot,
)

logger = logging.getLogger("runs.services.engine")


def _admit(run: Run) -> bool:
    """FIFO admission for workflows with `max_concurrent_runs`. Locks the workflow row so two
    planners cannot both admit past the limit."""
    limit = (
        Workflow.objects.select_for_update()
        .filter(pk=run.workflow_id)
        .values_list("max_concurrent_runs", flat=True)
        .first()
    )
    if not limit:
        return True
    active = Run.objects.filter(
        workflow_id=run.workflow_id,
        status__in=[Run.Status.RUNNING, Run.Status.WAITING_APPROVAL],
    ).count()
    if active >= limit:
        return False
    if Run.objects.filter(
        workflow_id=run.workflow_id,
        status__in=[Run.Status.QUEUED, Run.Status.PENDING],
        created_at__lt=run.created_at,
    ).exists():
        return False
    if active + 1 < limit:
        # Room is left after this one: a younger run that queued while this one was still
        # pending (and so was refused above) is planned again; it admits itself or not.
        following = (
            Run.objects.filter(
                workflow_id=run.workflow_id,
                status=Run.Status.QUEUED,
                created_at__gt=run.created_at,
            )
            .order_by("created_at")
            .values_list("pk", flat=True)
            .first()
        )
        if following:
            send_advance(following)
    return True


def run_enqueue(*, run_id: Any) -> None:
    """pending → queued (the first task of a run, sent after its creation commits), then plan."""
    with transaction.atomic():
        moved = Run.objects.filter(pk=run_id, status=Run.Status.PENDING).update(
            status=Run.Status.QUEUED, queued_at=timezone.now()
        )
        if moved:
            events_append(
                run_id, [{"type": RunEvent.Type.RUN_STATUS, "payload": {"status": "queued"}}]
            )
    run_advance(run_id=run_id)


def run_advance(*, run_id: Any) -> None:
    # The scope ends after the commit: the steps it sends carry the trace context of the
    # inline step that made them ready, and nothing of it stays on the worker thread.
    with tracing.context_scope(), transaction.atomic():
        run = lock_run(run_id)
        if run is not None:
            run_advance_locked(run, inline=True)


@observability.run_scope
def run_advance_locked(
    run: Run, *, inline: bool = False, events: list[dict[str, Any]] | None = None
) -> None:
    """Plan the run once: admit it, skip what must be skipped, queue what is ready, and finish
    it when nothing is left. Call with the run row locked (inside a transaction).

    With `inline` (workers only, never a web request), ready steps that are local and free of
    side effects (transforms, builtin tools) run right here, in this transaction, instead of
    taking a broker hop each: like Temporal's local activities. Up to
    SPARKOPS_INLINE_STEPS of them per call; the rest wait for the next planning, sent at once.

    `events` (the caller's, such as the step completion that led here) are written first, in
    the same statement as the planner's."""
    with policy_hooks.cached() if inline else contextlib.nullcontext():
        _advance(run, inline=inline, events=list(events or []))


def _advance(run: Run, *, inline: bool, events: list[dict[str, Any]]) -> None:
    if run.is_finished or run.cancel_requested or not _start(run, events):
        events_append(run.pk, events)
        return
    if past_deadline(run):
        time_out_locked(run, events=events)
        return
    planning = _Planning(run, inline=inline, events=events)
    planning.settle(planning.run_until_stable())


def _start(run: Run, events: list[dict[str, Any]]) -> bool:
    """A pending or queued run is admitted (its concurrency limit allowing) and set running
    with its deadline; False while it must keep waiting."""
    if run.status not in (Run.Status.PENDING, Run.Status.QUEUED):
        return True
    if not _admit(run):
        return False
    now = timezone.now()
    snapshot = version_snapshot(run)
    run.status = Run.Status.RUNNING
    run.started_at = run.started_at or now
    run.queued_at = run.queued_at or now
    run.deadline = now + timedelta(seconds=int(snapshot.get("timeout_seconds") or 3600))
    run.save(update_fields=["status", "started_at", "queued_at", "deadline"])
    events.append({"type": RunEvent.Type.RUN_STATUS, "payload": {"status": "running"}})
    return True


class _Planning:
    """One planning of a running run (its row locked): skip, wait, run inline or queue each
    node the planner finds ready, again until nothing changes (`run_until_stable`); then
    `settle` finishes the run or moves it between running and waiting_approval, writes the
    events and sends the queued steps."""

    def __init__(self, run: Run, *, inline: bool, events: list[dict[str, Any]]) -> None:
        self.run = run
        self.events = events
        self.now = timezone.now()
        self.definition = version_snapshot(run)["definition"]
        shape = version_shape(run)
        self.nodes = shape.nodes
        self.by_id = {node.id: node for node in self.nodes}
        self.raw_nodes = shape.by_id
        # Light rows for planning; outputs are loaded only for the steps a template reads.
        self.steps = {row[1]: _StepRow(*row) for row in _step_rows(run)}
        self.secrets = SecretBag(run.project_id)
        self.tools: dict[str, Any] = {}
        self.to_send: list[_StepRow] = []
        # Steps queued in memory, not yet in the database: written with the events when the
        # planning ends (one statement), or before anything else reads or writes steps.
        self.to_queue: list[int] = []
        self.inline_left = settings.SPARKOPS_INLINE_STEPS if inline else 0
        self.inline = self.inline_left > 0
        self.deferred = False  # local steps past the inline limit: plan again after commit
        self.changed = False
        self.chosen: dict[str, str] = {}
        self.maps = [node.id for node in self.nodes if node.type == "map"]
        self.loops = [node.id for node in self.nodes if node.type == "loop"]

    def flush_queued(self) -> None:
        if self.to_queue:
            queue_steps(self.to_queue, self.now)
            self.to_queue = []

    def context_for(self, value: Any, *, condition: bool = False) -> dict[str, Any]:
        self.flush_queued()
        wanted = referenced(value, condition=condition)
        return template_context(self.run, step_states(self.run.pk, wanted), self.secrets)

    def set_status(self, step: _StepRow, status: str, **fields: Any) -> bool:
        self.flush_queued()
        moved = RunStep.objects.filter(pk=step.pk, status=step.status).update(
            status=status, **fields
        )
        if moved:
            step.status = status
            for name, value in fields.items():
                setattr(step, name, value)
            self.changed = True
        return bool(moved)

    def plan(self) -> planner.Plan:
        return planner.plan(
            self.nodes, {n: s.status for n, s in self.steps.items()}, self._chosen_branches()
        )

    def _chosen_branches(self) -> dict[str, str]:
        """The branch each succeeded switch picked, read once per switch (runs without a
        switch read nothing)."""
        unread = [
            node.id
            for node in self.nodes
            if node.type == "switch"
            and node.id not in self.chosen
            and self.steps[node.id].status == RunStep.Status.SUCCEEDED
        ]
        if unread:
            rows = RunStep.objects.filter(run=self.run, node_id__in=unread).values_list(
                "node_id", "output"
            )
            for node_id, output in rows:
                branch = output.get("branch") if isinstance(output, dict) else None
                self.chosen[node_id] = branch if isinstance(branch, str) else ""
        return self.chosen

    def run_until_stable(self) -> planner.Plan:
        """Apply plans until one changes nothing the planner reads. Queuing a ready step is
        not such a change (its successors wait for it to finish, and the run stays running),
        so a step that only queues its successors plans once."""
        result = self.plan()
        self.changed = True
        while self.changed and not result.fatal:
            self.changed = False
            for node_id in result.skip:
                step = self.steps[node_id]
                if self.set_status(step, RunStep.Status.SKIPPED, finished_at=self.now):
                    reason = result.skip_reasons.get(node_id, "every upstream step was skipped")
                    self.events.append(_step_event(step, "skipped", reason=reason))
            ready = [queued for node_id in result.ready if (queued := self._consider(node_id))]
            if ready:
                self._queue(ready)
            for map_id in self.maps:
                if self.steps[map_id].status == RunStep.Status.RUNNING:
                    _MapWindow(self, map_id).advance()
            for loop_id in self.loops:
                if self.steps[loop_id].status == RunStep.Status.RUNNING:
                    _Loop(self, loop_id).advance()
            if self.changed:
                result = self.plan()
        return result

    def _consider(self, node_id: str) -> _StepRow | None:
        """Settle a ready node where it stands (skipped or failed by its `when`, parked for an
        approval, run inline, deferred) and return its step only when it is to be queued."""
        self.flush_queued()
        node, step = self.by_id[node_id], self.steps[node_id]
        if node.when and not self._when_holds(node.when, step):
            return None
        if node.type == "approval":
            self._request_approval(node_id, step)
            return None
        if node.type == "map":
            _MapWindow(self, node_id).start()
            return None
        if node.type == "loop":
            _Loop(self, node_id).start()
            return None
        if node.type == "workflow":  # its child run is started after commit
            if self.set_status(step, RunStep.Status.RUNNING, started_at=self.now, attempt=1):
                self.events.append(_step_event(step, "running"))
                send_child_start(step.pk, 1)
            return None
        if node.type == "tool" and _tool_needs_approval(
            self.run, node_id, step, self.events, self.set_status
        ):
            self.changed = True
            return None
        raw = self.raw_nodes[node_id]
        if not (self.inline and _is_local(self.run, raw, self.tools)):
            return step
        if self.inline_left <= 0:
            self.deferred = True
            return None
        self.inline_left -= 1
        _execute_inline(self.run, step, raw, self.secrets, self.tools, self.events)
        self.changed = True
        return None

    def _when_holds(self, when: str, step: _StepRow) -> bool:
        """Whether the node's `when` holds; when it does not (or cannot be evaluated) the step
        is skipped (or failed) here."""
        try:
            go = evaluate_condition(when, self.context_for(when, condition=True))
        except (TemplateError, SparkOpsError) as exc:
            error = {"type": "when_error", "message": str(exc.detail)}
            if self.set_status(step, RunStep.Status.FAILED, error=error, finished_at=self.now):
                self.events.append(_step_event(step, "failed", error=error))
            return False
        if not go and self.set_status(step, RunStep.Status.SKIPPED, finished_at=self.now):
            self.events.append(_step_event(step, "skipped", reason="`when` is false"))
        return bool(go)

    def _request_approval(self, node_id: str, step: _StepRow) -> None:
        raw = node_of(self.run, node_id).get("message") or "Approve to continue."
        try:
            message = render_value(raw, self.context_for(raw))
        except (TemplateError, SparkOpsError):
            message = raw
        message = self.secrets.redact(message)
        if self.set_status(step, RunStep.Status.WAITING_APPROVAL, input={"message": message}):
            self.events.append(_step_event(step, "waiting_approval"))
            self.events.append(
                {
                    "type": RunEvent.Type.APPROVAL_REQUESTED,
                    "node_id": node_id,
                    "payload": {"message": message},
                }
            )

    def _queue(self, ready: list[_StepRow]) -> None:
        # One UPDATE for every ready step (a 500-node fan-out queues in one statement), made
        # with the planning's events when nothing reads steps before (`to_queue`). Pending
        # steps change only under the run lock we hold, so all of them move.
        self.to_queue += [step.pk for step in ready]
        for step in ready:
            step.status = RunStep.Status.QUEUED
            step.attempt += 1
            self.events.append(_step_event(step, "queued"))
            self.to_send.append(step)

    def settle(self, result: planner.Plan) -> None:
        if result.fatal or result.run_status == planner.SUCCEEDED or past_deadline(self.run):
            self.flush_queued()
        if past_deadline(self.run):  # inline steps ran past it: whatever they brought, too late
            time_out_locked(self.run, events=self.events)
        elif result.fatal:
            self._fail(result.fatal[0])
        elif result.run_status == planner.SUCCEEDED:
            self._succeed()
        else:
            self._carry_on(result.run_status)

    def _fail(self, failed: str) -> None:
        step_error = RunStep.objects.filter(run=self.run, node_id=failed).values_list(
            "error", flat=True
        )[0]
        error = {
            "type": "step_failed",
            "message": f"Step '{failed}' failed: {(step_error or {}).get('message', '')}",
            "step": failed,
            "step_error": step_error,
        }
        events_append(self.run.pk, self.events)
        finish_run(self.run, Run.Status.FAILED, error=error)

    def _succeed(self) -> None:
        events_append(self.run.pk, self.events)
        template = self.definition.get("output")
        try:
            output = render_value(template, self.context_for(template))
        except (TemplateError, SparkOpsError) as exc:
            error = {"type": "output_error", "message": str(exc.detail)}
            finish_run(self.run, Run.Status.FAILED, error=error)
            return
        if output is None:
            output = {
                node_id: state["output"]
                for node_id, state in step_states(self.run.pk).items()
                if state["status"] == RunStep.Status.SUCCEEDED
            }
        finish_run(self.run, Run.Status.SUCCEEDED, output=self.secrets.redact(output))

    def _carry_on(self, run_status: str) -> None:
        run = self.run
        wanted = (
            Run.Status.WAITING_APPROVAL
            if run_status == planner.WAITING_APPROVAL
            else Run.Status.RUNNING
        )
        if run.status != wanted:
            run.status = wanted
            run.save(update_fields=["status"])
            self.events.append({"type": RunEvent.Type.RUN_STATUS, "payload": {"status": wanted}})
        taken = self.to_send.pop(0) if self.to_send and dispatch.reserve() else None
        if taken is not None:
            self.events.append(_step_event(taken, "running", worker=WORKER_NAME))
        if taken is None:
            events_append(run.pk, self.events, queue=(self.to_queue, self.now))
        else:
            _hand_over(run, taken, self.events, (self.to_queue, self.now))
        self.to_queue = []
        dispatch.send_steps(run.pk, [(step.pk, step.attempt) for step in self.to_send])
        if self.deferred:
            send_advance(run.pk)


class _MapWindow:
    """A `map` node under planning. `start` renders its list and writes one pending step row
    per item (reusing the parent's succeeded items on a resume from failure); `advance` keeps
    up to `max_concurrency` items in flight (run inline when local, else queued), and ends the
    map: failed at the first item that failed for good (`fail_fast`, the rest cancelled), or
    succeeded with the outputs in input order once every item is finished."""

    def __init__(self, planning: _Planning, map_id: str) -> None:
        self.planning = planning
        self.run = planning.run
        self.map_id = map_id
        self.step = planning.steps[map_id]
        self.node = planning.raw_nodes[map_id]

    def _items(self) -> Any:
        return RunStep.objects.filter(
            run=self.run, item_index__isnull=False, node_id__startswith=f"{self.map_id}["
        )

    def _end(self, status: str, **fields: Any) -> None:
        planning = self.planning
        if planning.set_status(self.step, status, finished_at=planning.now, **fields):
            payload = {"error": fields["error"]} if "error" in fields else {}
            planning.events.append(_step_event(self.step, status, **payload))

    def start(self) -> None:
        planning, node = self.planning, self.node
        source = node.get("items")
        try:
            items = (
                render_value(source, planning.context_for(source))
                if isinstance(source, str)
                else source
            )
        except (TemplateError, SparkOpsError) as exc:
            message = f"Cannot render the items of map '{self.map_id}': {exc.detail}"
            self._end(RunStep.Status.FAILED, error={"type": "template_error", "message": message})
            return
        limit = settings.SPARKOPS_MAP_MAX_ITEMS
        if not isinstance(items, list):
            message = f"The items of map '{self.map_id}' are not a list: {type(items).__name__}."
            self._end(RunStep.Status.FAILED, error={"type": "map_items", "message": message})
            return
        if len(items) > limit:
            message = (
                f"Map '{self.map_id}' has {len(items)} items; at most {limit} are allowed "
                "(SPARKOPS_MAP_MAX_ITEMS)."
            )
            self._end(RunStep.Status.FAILED, error={"type": "too_many_items", "message": message})
            return
        reused = self._reusable(items)
        item_type = node["node"]["type"]
        now = planning.now
        rows = []
        for index, value in enumerate(items):
            previous = reused.get(index)
            rows.append(
                RunStep(
                    run=self.run,
                    node_id=item_id(self.map_id, index),
                    type=item_type,
                    item_index=index,
                    item=value,
                    status=RunStep.Status.SUCCEEDED if previous else RunStep.Status.PENDING,
                    input=previous.input if previous else None,
                    output=previous.output if previous else None,
                    reused_from=previous,
                    finished_at=now if previous else None,
                )
            )
        planning.flush_queued()
        RunStep.objects.bulk_create(rows, batch_size=1000)
        planning.events.extend(
            {
                "type": RunEvent.Type.STEP_STATUS,
                "node_id": item_id(self.map_id, index),
                "payload": {"status": "succeeded", "reused_from": str(self.run.parent_run_id)},
            }
            for index in sorted(reused)
        )
        summary = {"items": len(items), "reused": len(reused)}
        if planning.set_status(
            self.step, RunStep.Status.RUNNING, started_at=now, attempt=1, input=summary
        ):
            planning.events.append(_step_event(self.step, "running", **summary))
        self.advance()

    def _reusable(self, items: list[Any]) -> dict[int, RunStep]:
        """On a resume from failure, the parent run's succeeded items of this map (the same
        item at the same position): only the others run again."""
        run = self.run
        if not (run.reuse_succeeded and run.parent_run_id):
            return {}
        parent_items = RunStep.objects.filter(
            run_id=run.parent_run_id,
            item_index__isnull=False,
            node_id__startswith=f"{self.map_id}[",
            status=RunStep.Status.SUCCEEDED,
        ).only("id", "item_index", "item", "input", "output")
        return {
            row.item_index: row
            for row in parent_items
            if row.item_index is not None
            and row.item_index < len(items)
            and items[row.item_index] == row.item
        }

    def advance(self) -> None:
        planning = self.planning
        planning.flush_queued()  # the counts below must see the items queued in memory
        counts = dict(
            self._items().values_list("status").annotate(n=Count("id")).values_list("status", "n")
        )
        failed = counts.get(RunStep.Status.FAILED, 0)
        collect = self.node.get("on_item_failure") == "collect"
        if failed and not collect:
            self._fail_fast()
            return
        in_flight = sum(counts.get(s, 0) for s in (RunStep.Status.QUEUED, RunStep.Status.RUNNING))
        pending = counts.get(RunStep.Status.PENDING, 0)
        if not pending and not in_flight and not counts.get(RunStep.Status.WAITING_APPROVAL):
            self._succeed(failed)
            return
        free = int(self.node.get("max_concurrency") or 10) - in_flight
        if free <= 0 or not pending:
            return
        rows = (
            self._items()
            .filter(status=RunStep.Status.PENDING)
            .order_by("item_index")
            .values_list("id", "node_id", "type", "status", "attempt", "item_index", "item")[:free]
        )
        to_queue = []
        for pk, node_id, step_type, status, attempt, index, item in rows:
            row = _StepRow(pk, node_id, step_type, status, attempt)
            node = item_node(self.node, index)
            if step_type == "workflow":  # a child run per item, started after commit
                if planning.set_status(
                    row, RunStep.Status.RUNNING, started_at=planning.now, attempt=1
                ):
                    planning.events.append(_step_event(row, "running"))
                    send_child_start(pk, 1)
            elif not (planning.inline and _is_local(self.run, node, planning.tools)):
                to_queue.append(row)
            elif planning.inline_left <= 0:
                planning.deferred = True
            else:
                planning.inline_left -= 1
                _execute_inline(
                    self.run,
                    row,
                    node,
                    planning.secrets,
                    planning.tools,
                    planning.events,
                    item=(index, item),
                )
                planning.changed = True
        if to_queue:
            planning._queue(to_queue)

    def _fail_fast(self) -> None:
        planning = self.planning
        planning.flush_queued()
        index, error = (
            self._items()
            .filter(status=RunStep.Status.FAILED)
            .order_by("item_index")
            .values_list("item_index", "error")
            .first()
        ) or (None, None)
        unfinished = self._items().exclude(status__in=RunStep.FINISHED_STATUSES)
        for node_id, previous in unfinished.values_list("node_id", "status"):
            planning.events.append(
                {
                    "type": RunEvent.Type.STEP_STATUS,
                    "node_id": node_id,
                    "payload": {"status": "cancelled", "from": previous},
                }
            )
        unfinished.update(status=RunStep.Status.CANCELLED, finished_at=planning.now, state=None)
        message = (error or {}).get("message", "")
        self._end(
            RunStep.Status.FAILED,
            error={
                "type": "item_failed",
                "message": f"Item {index} of map '{self.map_id}' failed: {message}",
                "item_index": index,
                "item_error": error,
            },
        )

    def _succeed(self, failed: int) -> None:
        outputs = [
            output if status == RunStep.Status.SUCCEEDED else None
            for status, output in self._items()
            .order_by("item_index")
            .values_list("status", "output")
        ]
        too_large = oversized(outputs)
        if too_large is not None:
            self._end(RunStep.Status.FAILED, error=too_large.as_dict())
            return
        planning = self.planning
        if planning.set_status(
            self.step, RunStep.Status.SUCCEEDED, output=outputs, finished_at=planning.now
        ):
            planning.events.append(
                _step_event(self.step, "succeeded", items=len(outputs), failed_items=failed)
            )


class _Loop:
    """A `loop` node under planning: one iteration at a time, each a step row of its own
    (`<loop>[<n>]`, `item_index` n, `item` the previous output), run inline when local, queued,
    or as a child run for a workflow body. After each iteration `until` is evaluated; true ends
    the loop with that output, false starts the next, up to `max_iterations` (then it fails)."""

    def __init__(self, planning: _Planning, loop_id: str) -> None:
        self.planning = planning
        self.run = planning.run
        self.loop_id = loop_id
        self.step = planning.steps[loop_id]
        self.node = planning.raw_nodes[loop_id]

    def _end(self, status: str, iterations: int, **fields: Any) -> None:
        planning = self.planning
        if planning.set_status(
            self.step, status, finished_at=planning.now, input={"iterations": iterations}, **fields
        ):
            payload = {"error": fields["error"]} if "error" in fields else {}
            planning.events.append(_step_event(self.step, status, iterations=iterations, **payload))

    def start(self) -> None:
        planning = self.planning
        reused = self._reusable()
        summary = {"reused": len(reused)} if reused else {}
        if not planning.set_status(
            self.step, RunStep.Status.RUNNING, started_at=planning.now, attempt=1, input=summary
        ):
            return
        planning.events.append(_step_event(self.step, "running", **summary))
        if not reused:
            self._iterate(0, None)
            return
        planning.flush_queued()
        body_type = self.node["node"]["type"]
        RunStep.objects.bulk_create(
            RunStep(
                run=self.run,
                node_id=item_id(self.loop_id, index),
                type=body_type,
                item_index=index,
                item=row.item,
                status=RunStep.Status.SUCCEEDED,
                input=row.input,
                output=row.output,
                reused_from=row,
                finished_at=planning.now,
            )
            for index, row in enumerate(reused)  # the iterations 0, 1, ... in order
        )
        planning.events.extend(
            {
                "type": RunEvent.Type.STEP_STATUS,
                "node_id": item_id(self.loop_id, index),
                "payload": {"status": "succeeded", "reused_from": str(self.run.parent_run_id)},
            }
            for index in range(len(reused))
        )
        self.advance()  # `until` on the last reused iteration: end there, or run the next

    def _reusable(self) -> list[RunStep]:
        """On a resume from failure, the parent run's succeeded iterations of this loop from
        the first on, up to the one that failed: the loop goes on from there."""
        run = self.run
        if not (run.reuse_succeeded and run.parent_run_id):
            return []
        rows = RunStep.objects.filter(
            run_id=run.parent_run_id,
            item_index__isnull=False,
            node_id__startswith=f"{self.loop_id}[",
            status=RunStep.Status.SUCCEEDED,
        ).order_by("item_index")
        reused: list[RunStep] = []
        for row in rows.only("id", "item_index", "item", "input", "output"):
            if row.item_index != len(reused):
                break
            reused.append(row)
        return reused

    def _iterate(self, index: int, previous: Any) -> None:
        planning = self.planning
        planning.flush_queued()
        body = self.node["node"]
        row = RunStep.objects.create(
            run=self.run,
            node_id=item_id(self.loop_id, index),
            type=body["type"],
            item_index=index,
            item=previous,
        )
        step = _StepRow(row.pk, row.node_id, row.type, row.status, 0)
        node = item_node(self.node, index)
        if body["type"] == "workflow":
            if planning.set_status(
                step, RunStep.Status.RUNNING, started_at=planning.now, attempt=1
            ):
                planning.events.append(_step_event(step, "running"))
                send_child_start(step.pk, 1)
        elif planning.inline_left > 0 and _is_local(self.run, node, planning.tools):
            # one iteration after the other: the next is planned once this one is written
            planning.inline_left -= 1
            _execute_inline(
                self.run,
                step,
                node,
                planning.secrets,
                planning.tools,
                planning.events,
                item=(index, previous),
            )
            planning.changed = True
        else:
            planning._queue([step])

    def advance(self) -> None:
        planning = self.planning
        planning.flush_queued()
        last = (
            RunStep.objects.filter(
                run=self.run, item_index__isnull=False, node_id__startswith=f"{self.loop_id}["
            )
            .order_by("-item_index")
            .values_list("item_index", "status", "output", "error")
            .first()
        )
        if last is None:
            return
        last_index, status, output, error = last
        index = int(last_index or 0)
        if status == RunStep.Status.FAILED:
            message = (error or {}).get("message", "")
            self._end(
                RunStep.Status.FAILED,
                index + 1,
                error={
                    "type": "iteration_failed",
                    "message": f"Iteration {index} of loop '{self.loop_id}' failed: {message}",
                    "iteration": index,
                    "iteration_error": error,
                },
            )
            return
        if status != RunStep.Status.SUCCEEDED:
            return
        until = self.node["until"]
        try:
            context = planning.context_for(until, condition=True)
            done = evaluate_condition(until, {**context, "output": output, "iteration": index})
        except (TemplateError, SparkOpsError) as exc:
            message = f"Cannot evaluate the `until` of loop '{self.loop_id}': {exc.detail}"
            error = {"type": "until_error", "message": message}
            self._end(RunStep.Status.FAILED, index + 1, error=error)
            return
        if done:
            self._end(RunStep.Status.SUCCEEDED, index + 1, output=output)
            return
        limit = int(self.node.get("max_iterations") or 10)
        if index + 1 >= limit:
            message = (
                f"Loop '{self.loop_id}' ran {limit} iterations (max_iterations) and `until` "
                "never held."
            )
            error = {"type": "max_iterations", "message": message}
            self._end(RunStep.Status.FAILED, index + 1, error=error)
            return
        self._iterate(index + 1, output)


def _tool_needs_approval(run: Run, node_id: str, step: Any, events: list, set_status: Any) -> bool:
    """An enforced `tool_requires_approval` policy naming this node's tool parks the step in
    `waiting_approval` before it is queued; approving it queues it (runs.services.step_decide)."""
    tool_name = str(node_of(run, node_id).get("tool"))
    reason = policy_hooks.tool_needs_approval(run=run, node_id=node_id, tool_name=tool_name)
    if not reason:
        return False
    message = {"message": reason, "policy": True}
    if set_status(step, RunStep.Status.WAITING_APPROVAL, input=message):
        events.append(_step_event(step, "waiting_approval"))
        events.append(
            {"type": RunEvent.Type.APPROVAL_REQUESTED, "node_id": node_id, "payload": message}
        )
    return True


def _is_local(run: Run, node: dict[str, Any], tools: dict[str, Any]) -> bool:
    """A step the planner may run inline: a transform, a switch, or a call of a builtin tool
    (pure functions of their arguments: no network, no waiting)."""
    if node["type"] in ("transform", "switch"):
        return True
    if node["type"] != "tool":
        return False
    tool = find_tool(run.project_id, str(node.get("tool")), tools)
    return tool is not None and tool.kind == "builtin"


def _execute_inline(
    run: Run,
    step: _StepRow,
    node: dict[str, Any],
    secrets: SecretBag,
    tools: dict[str, Any],
    events: list[dict[str, Any]],
    *,
    item: tuple[int, Any] | None = None,
) -> None:
    """Run one local step in the planner's transaction, as one attempt with the same events,
    policy checks, redaction, size cap and retry rules as a step run by a worker; its row is
    written once, with the outcome. The step's own writes sit in a savepoint, so an unexpected
    error (a bug, a database error) fails only the step."""
    now = timezone.now()
    attempt = step.attempt + 1
    model = RunStep(
        pk=step.pk,
        run=run,
        node_id=step.node_id,
        type=step.type,
        status=RunStep.Status.RUNNING,
        attempt=attempt,
        queued_at=now,
        started_at=now,
    )
    if item is not None:  # an item of a map
        model.item_index, model.item = item
    checkpoint = InlineCheckpoint(model, attempt, step_timeout(node), secrets, tools)
    step.attempt = attempt
    events.append(_step_event(step, "queued", inline=True))
    events.append(_step_event(step, "running", worker=WORKER_NAME))
    mark = len(events)
    error: StepError | None = None
    output: Any = None
    savepoint = transaction.savepoint()
    try:
        with (
            logcontext.scope(step_id=step.pk, attempt=attempt),
            events_collecting(run.pk, events),
            observability.step_span(model, attempt),
        ):
            output = secrets.redact(executors.execute(step=model, node=node, checkpoint=checkpoint))
            error = oversized(output)
        events.extend(checkpoint.events)
    except StepError as exc:  # an outcome: keep what the step wrote (its policy decisions)
        transaction.savepoint_commit(savepoint)
        error = redacted(exc, checkpoint)
        events.extend(checkpoint.events)
    except Exception as exc:  # a bug or a database error: undo the step's writes, fail it
        transaction.savepoint_rollback(savepoint)
        del events[mark:]
        logger.exception("step %s attempt %s crashed (inline)", step.pk, attempt)
        error = redacted(
            StepError("internal_error", f"{exc.__class__.__name__}: {exc}"), checkpoint
        )
    else:
        transaction.savepoint_commit(savepoint)
    finished = timezone.now()
    rows = RunStep.objects.filter(pk=step.pk, status=RunStep.Status.PENDING)
    written = {
        "queued_at": now,
        "started_at": now,
        "worker": WORKER_NAME,
        "input": checkpoint.input,
    }
    if error is None:
        rows.update(
            status=RunStep.Status.SUCCEEDED,
            output=strip_nul(output),
            error=None,
            finished_at=finished,
            attempt=attempt,
            **written,
        )
        step.status = RunStep.Status.SUCCEEDED
        duration = int((finished - now).total_seconds() * 1000)
        events.append(_step_event(step, "succeeded", duration_ms=duration))
        return
    step.status = record_failure(
        run,
        rows,
        step_id=step.pk,
        node_id=step.node_id,
        attempt=attempt,
        failures=1,
        error=error,
        events=events,
        **written,
    )
    if step.status == RunStep.Status.QUEUED:
        step.attempt += 1


@dataclass
class _StepRow:
    """What planning needs of a step (no JSON columns: a 500-node run plans in one light read)."""

    pk: int
    node_id: str
    type: str
    status: str
    attempt: int


def _step_rows(run: Run) -> list[tuple[Any, ...]]:
    """(id, node_id, type, status, attempt) of the run's steps, map items left out: read on
    every planning, so written once as SQL rather than built by the ORM each time."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, node_id, type, status, attempt FROM runs_runstep "
            "WHERE run_id = %s AND item_index IS NULL",
            [Run._meta.pk.get_db_prep_value(run.pk, connection)],
        )
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


def _hand_over(
    run: Run, step: _StepRow, events: list[dict[str, Any]], queue: tuple[list[int], Any]
) -> None:
    """Eager dispatch (dispatch.py): write the planning's events and queue its steps, starting
    `step` (queued → running, as `step_start` would; its event is in `events`), and hand it to
    this worker for after the commit. The run is locked, running and within its deadline: the
    planning checked."""
    started = events_append_starting(
        run.pk, events, queue=queue, start=step.pk, attempt=step.attempt, worker=WORKER_NAME
    )
    if started is None:  # not queued after all: the broker's way
        send_step(step.pk, step.attempt)
        return
    started.run = run
    dispatch.hand_over(started)


def _step_event(step: Any, status: str, **payload: Any) -> dict[str, Any]:
    return {
        "type": RunEvent.Type.STEP_STATUS,
        "node_id": step.node_id,
        "attempt": step.attempt or None,
        "payload": {"status": status, **payload},
    }
