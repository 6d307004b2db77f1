"""The sweeper itself: one at a time (a lease), it sends messages rather than planning, it
records each re-send and waits a backoff before the next, it caps its sends, and it does not
take a backlog for lost messages. (What it recovers is in test_engine_recovery.py and
tests/test_crash.py.)"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from runs import services
from runs.models import Lease, Run, RunStep
from runs.services.recovery import SWEEP_LEASE, resend_backoff, sweep_lease
from runs.tests.conftest import events_of, sends_lost
from runs.tests.factories import make_workflow, transform

pytestmark = pytest.mark.usefixtures("engine")

AGO = timedelta(minutes=2)  # older than the default grace (60 s)


def running_run(cast, nodes):
    """A run started `AGO` whose steps are still pending; nothing was sent."""
    wf = make_workflow(cast.project, cast.owner, nodes)
    with sends_lost():
        run = services.run_create(workflow=wf, input={}, actor=cast.owner)
    then = timezone.now() - AGO
    Run.objects.filter(pk=run.pk).update(
        status="running", queued_at=then, started_at=then, deadline=then + timedelta(hours=1)
    )
    return run


def lost_steps(cast, n, *, ago=AGO):
    """`n` steps queued `ago` whose messages never reached the broker, oldest first."""
    run = running_run(cast, [transform(f"s{i}", i) for i in range(n)])
    now = timezone.now()
    for i in range(n):
        RunStep.objects.filter(run=run, node_id=f"s{i}").update(
            status="queued", attempt=1, queued_at=now - ago - timedelta(seconds=n - i)
        )
    return run, list(RunStep.objects.filter(run=run).order_by("queued_at"))


def quiet_sweep():
    """A sweep whose sends are lost as well: what it wrote stays to be looked at."""
    with sends_lost():
        return services.sweep()


def resends(steps):
    return [RunStep.objects.get(pk=step.pk).resends for step in steps]


def test_a_sweep_does_nothing_while_another_holds_the_lease(cast):
    _, steps = lost_steps(cast, 3)
    with sweep_lease() as ours:
        assert ours
        counts = services.sweep()
    assert counts["skipped"] == 1
    assert counts["steps_resent"] == 0
    assert resends(steps) == [0, 0, 0]
    # Released: the next sweep does the work.
    counts = quiet_sweep()
    assert (counts["skipped"], counts["steps_resent"]) == (0, 3)
    assert Lease.objects.get(name=SWEEP_LEASE).expires_at is None


def test_a_lease_left_by_a_dead_sweeper_lapses(cast):
    lost_steps(cast, 1)
    Lease.objects.update_or_create(
        name=SWEEP_LEASE,
        defaults={"holder": "dead-host:1", "expires_at": timezone.now() + timedelta(minutes=1)},
    )
    assert services.sweep()["skipped"] == 1
    Lease.objects.filter(name=SWEEP_LEASE).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert quiet_sweep()["steps_resent"] == 1


def test_two_sweeps_at_once_send_each_message_once(cast):
    _, steps = lost_steps(cast, 6)
    barrier = threading.Barrier(2, timeout=10)
    results: list[dict] = []
    errors: list[BaseException] = []

    def sweeper():
        try:
            barrier.wait()
            results.append(quiet_sweep())
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len(results) == 2
    # One held the lease and sent everything; the other either found the lease taken or, if
    # it came after, found every message just re-sent (inside its backoff).
    assert sorted(r["steps_resent"] for r in results) == [0, 6]
    assert resends(steps) == [1] * 6


def test_the_sweeper_sends_rather_than_plans(cast, settings):
    settings.SPARKOPS_QUEUED_GRACE = 0
    wf = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    with sends_lost():
        run = services.run_create(workflow=wf, input={}, actor=cast.owner)
    counts = quiet_sweep()
    assert counts["enqueued"] == 1
    run.refresh_from_db()
    # Not planned here: still pending, its planning message (lost again) recorded as re-sent.
    assert run.status == "pending"
    assert (run.resends, run.resent_at is not None) == (1, True)
    assert [e.payload["status"] for e in events_of(run, "run.status")] == ["pending"]


def test_a_resend_is_not_repeated_within_the_backoff(cast):
    _, (step,) = lost_steps(cast, 1)
    assert quiet_sweep()["steps_resent"] == 1
    step.refresh_from_db()
    assert step.resends == 1
    first = step.resent_at

    # Lost again. Within the backoff (twice the grace after a first re-send): not sent.
    assert quiet_sweep()["steps_resent"] == 0
    wait = resend_backoff(1)
    assert wait == 2 * 60
    RunStep.objects.filter(pk=step.pk).update(resent_at=first - timedelta(seconds=wait - 5))
    assert quiet_sweep()["steps_resent"] == 0
    # Past it: sent again, and the next wait doubles.
    RunStep.objects.filter(pk=step.pk).update(resent_at=first - timedelta(seconds=wait + 1))
    assert quiet_sweep()["steps_resent"] == 1
    step.refresh_from_db()
    assert step.resends == 2
    assert resend_backoff(2) == 4 * 60


def test_the_cap_holds_and_the_oldest_go_first(cast, settings):
    settings.SPARKOPS_SWEEP_MAX_SENDS = 3
    _, steps = lost_steps(cast, 5)
    counts = quiet_sweep()
    assert (counts["steps_resent"], counts["deferred"]) == (3, 2)
    assert resends(steps) == [1, 1, 1, 0, 0]
    counts = quiet_sweep()
    assert (counts["steps_resent"], counts["deferred"]) == (2, 0)
    assert resends(steps) == [1] * 5


def test_a_backlog_is_not_taken_for_lost_messages(cast):
    # The step being worked on now waited 100 s in the queue: the queue is long, so a step
    # queued 2 minutes ago may well still be in it. Three times that latency (300 s) is
    # when it counts as lost.
    _, (waiting,) = lost_steps(cast, 1)
    busy = running_run(cast, [transform("busy", 1)])
    now = timezone.now()
    RunStep.objects.filter(run=busy).update(
        status="running",
        attempt=1,
        queued_at=now - timedelta(seconds=100),
        started_at=now,
        heartbeat_at=now,
    )
    assert quiet_sweep()["steps_resent"] == 0
    assert resends([waiting]) == [0]
    # Older than three times the queue's latency: lost after all.
    RunStep.objects.filter(pk=waiting.pk).update(queued_at=now - timedelta(seconds=301))
    assert quiet_sweep()["steps_resent"] == 1
    # And once the queue has drained (nothing waited long), the grace alone decides.
    RunStep.objects.filter(run=busy).update(queued_at=now)
    _, (other,) = lost_steps(cast, 1)
    assert quiet_sweep()["steps_resent"] == 1
    assert resends([other]) == [1]


def test_a_backlog_of_runs_is_not_taken_for_lost_messages(cast):
    # Runs planned lately waited 100 s for their planning message: a run created 2 minutes
    # ago and still pending is most likely behind them in the queue.
    wf = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    with sends_lost():
        pending = services.run_create(workflow=wf, input={}, actor=cast.owner)
        planned = services.run_create(workflow=wf, input={}, actor=cast.owner)
    now = timezone.now()
    Run.objects.filter(pk=pending.pk).update(created_at=now - AGO)
    Run.objects.filter(pk=planned.pk).update(
        status="queued", created_at=now - timedelta(seconds=100), queued_at=now
    )
    assert quiet_sweep()["enqueued"] == 0
    Run.objects.filter(pk=pending.pk).update(created_at=now - timedelta(seconds=301))
    assert quiet_sweep()["enqueued"] == 1


def test_a_run_waiting_for_an_approval_past_its_deadline_is_timed_out(cast):
    # Nothing acts on a run that waits for a person: the sweeper times it out.
    run = running_run(cast, [{"id": "ok", "type": "approval"}, transform("a", 1, "ok")])
    Run.objects.filter(pk=run.pk).update(
        status="waiting_approval", deadline=timezone.now() - timedelta(seconds=1)
    )
    RunStep.objects.filter(run=run, node_id="ok").update(status="waiting_approval")
    assert services.sweep()["runs_timed_out"] == 1
    run.refresh_from_db()
    assert (run.status, run.error["type"]) == ("timed_out", "timed_out")
    assert set(run.steps.values_list("status", flat=True)) == {"cancelled"}
