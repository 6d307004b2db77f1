"""Sending engine tasks. Always after commit, never raising: the database is the source of
truth, and anything that fails to reach the broker is found and re-sent by the sweeper."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import transaction

from sparkops import tracing
from sparkops.celery import app

logger = logging.getLogger(__name__)


def _send(task_name: str, args: list[Any], **options: Any) -> None:
    try:
        app.send_task(task_name, args=args, **options)
    except Exception as exc:  # broker down: the sweeper re-sends what is left queued
        logger.warning("could not send %s%s: %s", task_name, tuple(args), exc)


def send_advance(run_id: Any) -> None:
    """Plan the run again (after commit)."""
    transaction.on_commit(lambda: _send("runs.advance", [str(run_id)], queue="orchestration"))


def send_enqueue(run_id: Any) -> None:
    """Mark a freshly created run queued and plan it (after commit)."""
    transaction.on_commit(lambda: _send("runs.enqueue", [str(run_id)], queue="orchestration"))


def send_step(step_id: int, attempt: int, *, countdown: float | None = None) -> None:
    options: dict[str, Any] = {"queue": "steps"}
    if countdown:
        options["countdown"] = countdown
    transaction.on_commit(lambda: _send("runs.step_execute", [step_id, attempt], **options))


def send_steps(run_id: Any, steps: list[tuple[int, int]]) -> None:
    """Send queued steps of one run to the `steps` queue (after commit), up to
    SPARKOPS_STEPS_PER_MESSAGE (10 where the steps worker runs gevent, else 1) in a message:
    `runs.steps_execute` starts a message's steps in one statement and runs them at once."""
    per = max(settings.SPARKOPS_STEPS_PER_MESSAGE, 1)
    for index in range(0, len(steps), per):
        chunk = steps[index : index + per]
        if len(chunk) == 1:
            send_step(*chunk[0])
            continue
        args = [str(run_id), [[step_id, attempt] for step_id, attempt in chunk]]
        transaction.on_commit(functools.partial(_send, "runs.steps_execute", args, queue="steps"))


def send_child_start(step_id: int, attempt: int, *, countdown: float | None = None) -> None:
    """Start the child run of a `workflow` step (after commit); a retry after `countdown`."""
    options: dict[str, Any] = {"queue": "orchestration"}
    if countdown:
        options["countdown"] = countdown
    transaction.on_commit(lambda: _send("runs.child_start", [step_id, attempt], **options))


# --- eager dispatch ---------------------------------------------------------------------------
#
# A step that ends and makes its successor ready would send the successor through the broker
# and then sit idle while another worker (or itself) receives it: a publish, a delivery, an
# ack and a start transaction between two steps of a chain (agent → tool → agent). Like
# Temporal's eager activity execution, the `steps` worker whose planning made a step ready
# takes one such step itself: the planner queues it and starts it (queued → running, both
# events written) in the planning's own transaction, and the worker executes it after the
# commit. The rest of a fan-out is sent as before, for any worker. A started step whose worker
# dies is recovered like any silent attempt (its heartbeat stops). A task takes at most
# SPARKOPS_EAGER_STEPS steps in a row, and none after SPARKOPS_EAGER_SECONDS, so one chain
# cannot hold a worker (and its task's unacknowledged message) for ever.


class Taking:
    """The steps a `steps` worker task may take for itself (one at a time)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.taken = 0
        self.reserved = False
        # (step, trace context, whether its start's commit was confirmed)
        self.handed: tuple[Any, Any, bool] | None = None

    def reserve(self) -> bool:
        """Claim the one slot for a step the caller is about to start; False when the slot is
        taken or the budget spent (the caller sends the step)."""
        if self.reserved or self.taken >= settings.SPARKOPS_EAGER_STEPS:
            return False
        if time.monotonic() - self.started > settings.SPARKOPS_EAGER_SECONDS:
            return False
        self.reserved = True
        return True

    def hand(self, step: Any) -> None:
        """In the transaction that starts it: the step will be running, this worker's to
        execute, once the transaction commits (`confirm`); it carries the trace context it
        was planned in, as a message would."""
        self.handed = (step, tracing.current_context(), False)

    def confirm(self) -> None:
        """On commit: the handed step is running."""
        if self.handed is not None:
            self.handed = (*self.handed[:2], True)

    def next(self) -> tuple[Any, Any, bool] | None:
        """The step handed over since the last call, if any, and whether its start's commit
        was confirmed (unconfirmed: the connection was lost as it committed, or the
        transaction rolled back and a retry sent the step, its slot still reserved); the slot
        opens again."""
        handed, self.handed, self.reserved = self.handed, None, False
        if handed is not None:
            self.taken += 1
        return handed


_taking: ContextVar[Taking | None] = ContextVar("sparkops_taking", default=None)


@contextlib.contextmanager
def taking() -> Iterator[Taking]:
    """Around a `steps` worker task: the planner may hand it steps (`reserve`, `hand_over`)."""
    current = Taking()
    token = _taking.set(current)
    try:
        yield current
    finally:
        _taking.reset(token)


def reserve() -> bool:
    """Whether the caller (planning inside a `steps` worker task) may start one ready step
    here and hand it over (`hand_over`) instead of sending it."""
    current = _taking.get()
    return current is not None and current.reserve()


def hand_over(step: Any) -> None:
    """Give the step `reserve` was granted for (started in the current transaction) to the
    worker task: confirmed when the transaction commits. Its start's time (`started_at`)
    tells a commit that went through from one that did not when the commit's answer was lost
    with the connection (the worker's careful start with that time takes it up)."""
    current = _taking.get()
    assert current is not None, "hand_over() without reserve()"
    current.hand(step)
    transaction.on_commit(current.confirm)
