"""A real `celery beat` (django-celery-beat's DatabaseScheduler, its own process, the test
database) firing an entry every second into the real worker: however often it fires, each
cron slot of the schedule starts exactly one run."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery.signals import task_postrun
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from runs.models import Run
from runs.tests.factories import make_workflow, transform
from sparkops.celery import app
from sparkops.testing.engine import wait_for_run, wait_until
from sparkops.testing.processes import BeatProcess
from workflows import schedules
from workflows.models import ScheduleFire

pytestmark = pytest.mark.usefixtures("engine")


def test_beat_firing_every_second_starts_one_run_per_slot(cast):
    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="minutely")
    schedule = schedules.schedule_create(
        actor=cast.owner, workflow=workflow, name="every minute", cron="* * * * *", overlap="allow"
    )
    # A second entry for the same schedule, firing every second: what a double-firing beat,
    # or two beats, look like from the worker's side.
    PeriodicTask.objects.create(
        name="test: every second",
        task="workflows.schedule_fire",
        interval=IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS),
        args=json.dumps([schedule.pk]),
        queue="orchestration",
    )
    results: list[Any] = []

    def record(sender: Any = None, retval: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "name", None) == "workflows.schedule_fire":
            results.append(retval)

    task_postrun.connect(record, weak=False)
    beat = BeatProcess(app.conf.broker_url)
    beat.start()
    try:
        wait_until(lambda: len(results) >= 4, timeout=60, what=f"4 fires; beat: {beat.output()}")
    finally:
        beat.stop()
    sent = beat.sent("workflows.schedule_fire")
    wait_until(lambda: len(results) >= sent, timeout=30, what="the worker to drain")
    task_postrun.disconnect(record)

    fires = list(ScheduleFire.objects.filter(schedule=schedule))
    runs = list(Run.objects.filter(workflow=workflow))
    assert sent >= 4 and len(results) == sent
    # one fire row and one run per distinct minute; every other delivery was a no-op
    assert len(fires) == len({fire.slot for fire in fires}) == len(runs)
    assert 1 <= len(runs) <= 2 < sent  # a few seconds span at most one minute boundary
    assert sorted(r for r in results if r) == ["started"] * len(runs)
    assert results.count(None) == sent - len(runs)
    assert {run.trigger for run in runs} == {"schedule"}
    for run in runs:
        assert wait_for_run(run.pk).status == "succeeded"
