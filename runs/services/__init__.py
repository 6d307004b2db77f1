"""The run engine's services: the only writers of runs, steps and events."""

from runs.engine.errors import StepError, StepSuperseded

from .attempts import step_execute, steps_execute
from .events import event_append, events_append
from .lifecycle import (
    request_hash,
    run_cancel,
    run_create,
    run_create_idempotent,
    run_kick,
    run_retry,
    step_decide,
)
from .planning import run_advance, run_enqueue
from .recovery import sweep

__all__ = [
    "StepError",
    "StepSuperseded",
    "event_append",
    "events_append",
    "request_hash",
    "run_advance",
    "run_cancel",
    "run_create",
    "run_create_idempotent",
    "run_enqueue",
    "run_kick",
    "run_retry",
    "step_decide",
    "step_execute",
    "steps_execute",
    "sweep",
]
