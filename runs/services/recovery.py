"""Recovery: what messages and workers lost (runs and steps never sent, silent workers, steps
past their timeout) and runs past their deadline. Every fix goes through the same guarded
transitions as normal execution.

The sweeper (beat sends `runs.sweep` every SPARKOPS_SWEEP_SECONDS):
- runs one at a time: a lease row (`Lease`, taken by one conditional UPDATE, the same on
  PostgreSQL and SQLite) that lapses on its own if its holder dies; a sweep that finds it
  taken does nothing;
- sends messages rather than doing the work: a run whose planning message was lost gets
  `runs.enqueue` or `runs.advance` again, a step `runs.step_execute`, on their usual queues;
- records every re-send on the row (`resent_at`, `resends`, by a conditional UPDATE that is
  also the claim) and waits a doubling backoff before it sends the same message again;
- sends at most SPARKOPS_SWEEP_MAX_SENDS messages a sweep, oldest first;
- does not take a backlog for lost messages: a message is lost once it is older than the grace
  *and* than SPARKOPS_SWEEP_LATENCY_FACTOR times the latency its queue shows now (how long the
  messages being worked on now waited: the steps running now, the runs planned lately). A
  queue that is long makes that latency long, so its messages are not sent twice; once it
  drains, the latency falls and a message that is really lost is found.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from runs import deltas
from runs.engine.errors import StepError
from runs.models import Lease, Run, RunStep
from sparkops import tracing

from .attempts import step_fail, step_recover
from .dispatch import send_advance, send_child_start, send_enqueue, send_step
from .state import WORKER_NAME, lock_run, node_of, past_deadline, step_timeout, time_out_locked

SWEEP_LEASE = "runs.sweep"

COUNTS = (
    "enqueued",
    "advanced",
    "steps_resent",
    "steps_recovered",
    "steps_timed_out",
    "runs_timed_out",
    "deferred",  # due, but past this sweep's cap: the next sweep sends them
    "delta_files_pruned",  # the embedded default's live-output files no stream needs
    "skipped",  # 1 when another sweep held the lease
)


def sweep() -> dict[str, int]:
    """Find and fix what messages and workers lost, unless another sweep is at it. Safe to
    call anywhere, any number of times."""
    with tracing.context_scope(), sweep_lease() as ours:
        if not ours:
            return {**dict.fromkeys(COUNTS, 0), "skipped": 1}
        return _Sweep().run()


@contextlib.contextmanager
def sweep_lease(seconds: float | None = None) -> Iterator[bool]:
    """Hold the sweeper's lease for the block, if it is free (yields whether it was taken).
    A holder that dies leaves it to lapse after SPARKOPS_SWEEP_LEASE_SECONDS."""
    ttl = timedelta(seconds=seconds or settings.SPARKOPS_SWEEP_LEASE_SECONDS)
    holder = f"{WORKER_NAME}:{uuid.uuid4().hex[:12]}"
    now = timezone.now()
    Lease.objects.bulk_create([Lease(name=SWEEP_LEASE)], ignore_conflicts=True)
    # Two sweeps updating at once: the second waits for the first's row lock (PostgreSQL) or
    # the write lock (SQLite), then finds the lease taken and updates nothing.
    taken = (
        Lease.objects.filter(name=SWEEP_LEASE)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__lte=now))
        .update(holder=holder, expires_at=now + ttl)
    )
    try:
        yield bool(taken)
    finally:
        if taken:
            Lease.objects.filter(name=SWEEP_LEASE, holder=holder).update(holder="", expires_at=None)


def resend_backoff(resends: int) -> float:
    """Seconds a message the sweeper has re-sent `resends` times waits before the next
    re-send: twice the grace after the first, doubling, at most SPARKOPS_SWEEP_BACKOFF_MAX."""
    grace: float = settings.SPARKOPS_QUEUED_GRACE
    return min(grace * float(2 ** min(resends, 30)), float(settings.SPARKOPS_SWEEP_BACKOFF_MAX))


def steps_latency(now: datetime) -> float:
    """Seconds the step messages being worked on now waited in the queue (the longest wait of
    a running first attempt; retries wait their backoff on purpose and are left out)."""
    waits = [
        (started - max(queued, resent or queued)).total_seconds()
        for queued, resent, started in RunStep.objects.filter(
            status=RunStep.Status.RUNNING, failures=0, queued_at__isnull=False
        ).values_list("queued_at", "resent_at", "started_at")
        if started is not None and queued is not None
    ]
    return max([0.0, *waits])


def runs_latency(now: datetime) -> float:
    """Seconds the runs planned lately waited for their first planning message (runs the
    sweeper had to send again are left out: their wait was the loss, not the queue)."""
    since = now - timedelta(seconds=settings.SPARKOPS_QUEUED_GRACE)
    waits = [
        (queued - created).total_seconds()
        for created, queued in Run.objects.filter(
            status__in=[Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.WAITING_APPROVAL],
            queued_at__gte=since,
            resends=0,
        ).values_list("created_at", "queued_at")
        if queued is not None
    ]
    return max([0.0, *waits])


class _Sweep:
    def __init__(self) -> None:
        self.now = timezone.now()
        self.grace = settings.SPARKOPS_QUEUED_GRACE
        self.factor = settings.SPARKOPS_SWEEP_LATENCY_FACTOR
        self.sends_left = settings.SPARKOPS_SWEEP_MAX_SENDS
        self.counts = dict.fromkeys(COUNTS, 0)

    def run(self) -> dict[str, int]:
        self.time_out_runs()
        self.recover_silent_steps()
        self.resend_runs()
        self.resend_steps()
        self.resend_child_starts()
        self.time_out_steps()
        self.counts["delta_files_pruned"] = deltas.prune()
        return self.counts

    def _may_send(self) -> bool:
        if self.sends_left <= 0:
            self.counts["deferred"] += 1
            return False
        self.sends_left -= 1
        return True

    def _due(self, sent: datetime, resent: datetime | None, resends: int, lost: float) -> bool:
        """Whether a message last sent at `sent` is to be sent again: it is older than `lost`
        seconds, and the backoff after the sweeper's last re-send is over."""
        if (self.now - sent).total_seconds() < lost:
            return False
        return not (
            resent is not None
            and resends
            and (self.now - resent).total_seconds() < resend_backoff(resends)
        )

    def time_out_runs(self) -> None:
        """Runs past their deadline where nothing acts on it (waiting for an approval, steps
        stuck in a queue); the engine times out the others itself."""
        runs = Run.objects.active().filter(deadline__lt=self.now).order_by("deadline")
        for run_id in runs.values_list("pk", flat=True)[: settings.SPARKOPS_SWEEP_MAX_SENDS]:
            if run_time_out(run_id=run_id):
                self.counts["runs_timed_out"] += 1

    def recover_silent_steps(self) -> None:
        silent = self.now - timedelta(seconds=settings.SPARKOPS_HEARTBEAT_TIMEOUT)
        for step in (
            RunStep.objects.filter(status=RunStep.Status.RUNNING, heartbeat_at__lt=silent)
            .order_by("heartbeat_at")
            .values("pk", "attempt")
        ):
            if not self._may_send():
                continue
            if step_recover(step_id=step["pk"], attempt=step["attempt"], reason="heartbeat lost"):
                self.counts["steps_recovered"] += 1

    def resend_runs(self) -> None:
        """Runs committed but never sent (a crash between commit and send, the broker down),
        queued runs whose planning message was lost, running runs with nothing in flight (a
        lost advance after a step finished): their planning message is sent again."""
        lost = max(self.grace, self.factor * runs_latency(self.now))
        oldest = self.now - timedelta(seconds=min(lost, self.grace))
        in_flight = RunStep.objects.filter(
            run=OuterRef("pk"),
            status__in=[
                RunStep.Status.QUEUED,
                RunStep.Status.RUNNING,
                RunStep.Status.WAITING_APPROVAL,
            ],
        )
        candidates = Run.objects.filter(
            Q(status=Run.Status.PENDING, created_at__lt=oldest)
            | Q(status=Run.Status.QUEUED, queued_at__lt=oldest)
            | Q(status=Run.Status.RUNNING, started_at__lt=oldest, cancel_requested=False)
            & ~Exists(in_flight)
        ).order_by("created_at")
        for run in candidates.values(
            "pk", "status", "created_at", "queued_at", "started_at", "resent_at", "resends"
        ):
            sent = max(
                t
                for t in (run["created_at"], run["queued_at"], run["started_at"], run["resent_at"])
                if t is not None
            )
            if self._due(sent, run["resent_at"], run["resends"], lost) and self._may_send():
                self._resend_run(run["pk"], run["status"])

    def _resend_run(self, run_id: Any, status: str) -> None:
        with transaction.atomic():
            claimed = Run.objects.filter(pk=run_id, status=status).update(
                resent_at=self.now, resends=F("resends") + 1
            )
            if not claimed:
                return
            if status == Run.Status.PENDING:
                send_enqueue(run_id)
                self.counts["enqueued"] += 1
            else:
                send_advance(run_id)
                self.counts["advanced"] += 1

    def resend_steps(self) -> None:
        """Queued steps whose message was lost, and retries that waited in the database past
        the longest countdown (their first send is the sweeper's)."""
        lost = max(self.grace, self.factor * steps_latency(self.now))
        countdown_max = timedelta(seconds=settings.SPARKOPS_RETRY_COUNTDOWN_MAX)
        oldest = self.now - min(timedelta(seconds=lost), countdown_max)
        for step in (
            RunStep.objects.filter(
                status=RunStep.Status.QUEUED, run__status=Run.Status.RUNNING, queued_at__lt=oldest
            )
            .order_by("queued_at")
            .values("pk", "attempt", "queued_at", "next_attempt_at", "resent_at", "resends")
        ):
            queued, due, resent = step["queued_at"], step["next_attempt_at"], step["resent_at"]
            assert queued is not None  # filtered on queued_at above
            if due is not None and due > self.now:
                continue  # a retry waiting for its backoff
            if (
                due is not None
                and due - queued > countdown_max
                and (resent is None or resent < due)
            ):
                # Never sent (it waited in the database): its first send, not a re-send.
                if self._may_send():
                    self._send_step(step, first=True)
                continue
            sent = max(t for t in (queued, due, resent) if t is not None)
            if self._due(sent, resent, step["resends"], lost) and self._may_send():
                self._send_step(step, first=False)

    def _send_step(self, step: Mapping[str, Any], *, first: bool) -> None:
        with transaction.atomic():
            claimed = RunStep.objects.filter(
                pk=step["pk"], attempt=step["attempt"], status=RunStep.Status.QUEUED
            ).update(resent_at=self.now, resends=F("resends") + (0 if first else 1))
            if claimed:
                send_step(step["pk"], step["attempt"])
                self.counts["steps_resent"] += 1

    def resend_child_starts(self) -> None:
        """Workflow steps (or workflow iterations of a loop) running with no child run: their
        `runs.child_start` message was lost."""
        lost = max(self.grace, self.factor * steps_latency(self.now))
        oldest = self.now - timedelta(seconds=lost)
        for step in (
            RunStep.objects.filter(
                status=RunStep.Status.RUNNING,
                type="workflow",
                run__status=Run.Status.RUNNING,
                started_at__lt=oldest,
            )
            .order_by("started_at")
            .values(
                "pk", "attempt", "input", "started_at", "next_attempt_at", "resent_at", "resends"
            )
        ):
            if (step["input"] or {}).get("child_run"):
                continue  # this attempt's child was started (an earlier one's may have failed)
            times = (step["started_at"], step["next_attempt_at"], step["resent_at"])
            sent = max(t for t in times if t is not None)
            if self._due(sent, step["resent_at"], step["resends"], lost) and self._may_send():
                with transaction.atomic():
                    claimed = RunStep.objects.filter(
                        pk=step["pk"], attempt=step["attempt"], status=RunStep.Status.RUNNING
                    ).update(resent_at=self.now, resends=F("resends") + 1)
                    if claimed:
                        send_child_start(step["pk"], step["attempt"])
                        self.counts["steps_resent"] += 1

    def time_out_steps(self) -> None:
        """Running steps past their own timeout (the worker may be stuck in a call)."""
        # A map's own row runs while its items do (its timeout is each item's), a workflow
        # step while its child run does (bounded by the child's deadline).
        running = RunStep.objects.filter(status=RunStep.Status.RUNNING).exclude(
            type__in=["map", "workflow"]
        )
        for step in running.select_related("run__version"):
            node = node_of(step.run, step.node_id)
            limit = step_timeout(node) + settings.SPARKOPS_HEARTBEAT_SECONDS
            if step.started_at and step.started_at < self.now - timedelta(seconds=limit):
                error = StepError("timeout", "The step ran past its timeout.", retryable=True)
                if step_fail(step=step, attempt=step.attempt, error=error):
                    self.counts["steps_timed_out"] += 1


def run_time_out(*, run_id: Any) -> bool:
    with transaction.atomic():
        run = lock_run(run_id)
        if run is None or run.is_finished or not past_deadline(run):
            return False
        time_out_locked(run)
    return True
