"""The run engine's services: the only writers of runs, steps and events."""

from .engine import run_advance, run_enqueue, step_execute, sweep
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
from .steps import StepError, StepSuperseded

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
    "sweep",
]
