"""How a step attempt ends other than with an output: it failed (StepError), it is no longer
current (StepSuperseded), or it waits for a person (PauseForApproval, then StepPaused once
the step is parked)."""

from __future__ import annotations

from typing import Any


class StepError(Exception):
    """A step attempt failed. `retryable` decides whether the retry policy applies."""

    def __init__(self, type: str, message: str, *, retryable: bool = False, **details: Any) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.retryable = retryable
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "retryable": self.retryable,
            **self.details,
        }


class StepSuperseded(Exception):
    """The attempt is no longer current (cancelled, timed out, recovered elsewhere): stop and
    write nothing."""


class StepPaused(Exception):
    """The attempt parked its step in `waiting_approval` (`step_pause`) and wrote all there is
    to write: stop, and release the worker."""


class PauseForApproval(StepPaused):
    """A call inside the attempt needs a person's approval: the attempt (runs.services.attempts)
    parks the step with `state` (what resuming needs, secrets redacted) and `request` (the
    `approval.requested` payload), then stops."""

    def __init__(self, *, state: dict[str, Any], request: dict[str, Any]) -> None:
        super().__init__("waiting for an approval")
        self.state = state
        self.request = request
