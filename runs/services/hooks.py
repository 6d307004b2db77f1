"""Points where other parts of the platform join the engine. Called inside the engine's
transactions (with the run row locked); anything that talks to the outside world must go
through `transaction.on_commit`."""

from __future__ import annotations

from runs import signals
from runs.models import Run
from workflows.models import Workflow

from .dispatch import send_advance


def run_finished(run: Run) -> None:
    """A run reached a final status: admit the next queued run of a concurrency-limited
    workflow (FIFO)."""
    limit = run.workflow.max_concurrent_runs if run.workflow_id else None
    if limit:
        # The workflow row lock orders this with admission (engine._admit), which takes it
        # too: a run queued meanwhile is either admitted there or found here, never neither.
        Workflow.objects.select_for_update().filter(pk=run.workflow_id).values_list("pk").first()
        waiting = (
            Run.objects.filter(workflow_id=run.workflow_id, status=Run.Status.QUEUED)
            .order_by("created_at")
            .values_list("pk", flat=True)
            .first()
        )
        if waiting:
            send_advance(waiting)
    signals.run_finished.send(sender=Run, run=run)
