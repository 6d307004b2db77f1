"""Schedules: the django-celery-beat mirror after every service operation (and the drift check
that proves it), and what a fire does: one run per slot, overlap policies, paused workflows,
catch-up, start/end, input checks."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from projects import services as project_services
from runs import services as run_services
from runs.models import Run
from runs.tests.factories import make_workflow, transform
from runs.triggers import schedules as schedule_firing
from sparkops.errors import InvalidInput
from workflows import schedules, services
from workflows.models import Schedule, ScheduleFire
from workflows.tests.factories import WorkflowFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)  # a Monday, on the hour


@pytest.fixture
def workflow(cast):
    return WorkflowFactory(project=cast.project, created_by=cast.owner)


def make_schedule(workflow, actor, **fields):
    fields.setdefault("name", "hourly")
    fields.setdefault("cron", "0 * * * *")
    fields.setdefault("input", {"name": "Ada"})
    return schedules.schedule_create(actor=actor, workflow=workflow, **fields)


def task_of(schedule):
    return PeriodicTask.objects.select_related("crontab").get(
        name=schedules.periodic_task_name(schedule)
    )


def assert_in_sync():
    assert schedules.schedule_drift() == []


# --- the beat mirror -------------------------------------------------------------------------


def test_create_writes_the_periodic_task(cast, workflow):
    schedule = make_schedule(
        workflow, cast.developer, cron="*/15  9-17 * * 1-5", timezone="Europe/Berlin"
    )
    assert schedule.cron == "*/15 9-17 * * 1-5"
    task = task_of(schedule)
    assert schedule.periodic_task_id == task.pk
    assert task.task == "workflows.schedule_fire"
    assert json.loads(task.args) == [schedule.pk]
    assert task.queue == "orchestration"
    assert task.enabled is True
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_month) == ("*/15", "9-17", "*")
    assert (crontab.month_of_year, crontab.day_of_week) == ("*", "1-5")
    assert str(crontab.timezone) == "Europe/Berlin"
    assert schedule.next_run_at is not None
    assert_in_sync()


def test_update_enable_disable_and_delete_follow(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    schedule = schedules.schedule_update(
        schedule=schedule, actor=cast.developer, cron="30 6 * * *", timezone="Asia/Tokyo"
    )
    task = task_of(schedule)
    assert (task.crontab.minute, task.crontab.hour, str(task.crontab.timezone)) == (
        "30",
        "6",
        "Asia/Tokyo",
    )
    assert CrontabSchedule.objects.count() == 1  # the hourly crontab went with its last user
    assert_in_sync()

    start, end = T0 + timedelta(days=3650), T0 + timedelta(days=3660)
    schedule = schedules.schedule_update(
        schedule=schedule, actor=cast.developer, start_at=start, end_at=end
    )
    task = task_of(schedule)
    assert (task.start_time, task.expires) == (start, end)
    assert schedule.next_run_at > start
    assert_in_sync()

    schedule = schedules.schedule_set_enabled(
        schedule=schedule, actor=cast.developer, enabled=False
    )
    assert task_of(schedule).enabled is False
    assert schedule.next_run_at is None
    assert_in_sync()
    schedule = schedules.schedule_set_enabled(schedule=schedule, actor=cast.developer, enabled=True)
    assert task_of(schedule).enabled is True
    assert_in_sync()

    schedules.schedule_delete(schedule=schedule, actor=cast.developer)
    assert not PeriodicTask.objects.filter(task="workflows.schedule_fire").exists()
    assert not CrontabSchedule.objects.exists()
    assert_in_sync()


def test_workflow_pause_archive_and_activate_follow(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    for status, enabled in (("paused", False), ("active", True), ("archived", False)):
        services.workflow_set_status(workflow=workflow, actor=cast.owner, status=status)
        schedule.refresh_from_db()
        assert task_of(schedule).enabled is enabled, status
        assert (schedule.next_run_at is not None) is enabled
        assert_in_sync()


def test_deleting_the_workflow_or_project_removes_the_task(cast, workflow):
    make_schedule(workflow, cast.developer)
    services.workflow_delete(workflow=workflow, actor=cast.owner)
    assert not PeriodicTask.objects.filter(task="workflows.schedule_fire").exists()
    assert_in_sync()

    other = WorkflowFactory(project=cast.project, created_by=cast.owner)
    make_schedule(other, cast.developer)
    project_services.project_delete(project=cast.project, actor=cast.owner, cascade=True)
    assert not PeriodicTask.objects.filter(task="workflows.schedule_fire").exists()
    assert_in_sync()


def test_drift_check_finds_hand_edits_and_orphans_and_the_command_fails(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    out = io.StringIO()
    call_command("check_schedules", stdout=out)
    assert "in sync" in out.getvalue()

    task = task_of(schedule)
    task.enabled = False
    task.save()
    crontab = task.crontab
    crontab.hour = "5"
    crontab.save()
    PeriodicTask.objects.create(
        name="stray", task="workflows.schedule_fire", args="[999]", crontab=crontab
    )
    drift = schedules.schedule_drift()
    assert any("enabled is False, expected True" in line for line in drift), drift
    assert any("crontab hour is '5', expected '*'" in line for line in drift), drift
    assert any("'stray'" in line and "for no schedule" in line for line in drift), drift
    with pytest.raises(SystemExit) as exit_info:
        call_command("check_schedules", stdout=io.StringIO(), stderr=io.StringIO())
    assert exit_info.value.code == 1

    call_command("check_schedules", "--fix", stdout=io.StringIO())
    assert_in_sync()
    assert not PeriodicTask.objects.filter(name="stray").exists()


def test_a_deleted_periodic_task_is_drift(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    task_of(schedule).delete()
    assert schedules.schedule_drift() == [
        f"schedule {schedule.pk} (hourly): no PeriodicTask 'sparkops-schedule-{schedule.pk}'"
    ]
    schedules.schedules_sync_all()
    assert_in_sync()


# --- validation ------------------------------------------------------------------------------


def test_invalid_cron_timezone_and_input_are_refused_with_reasons(cast, workflow):
    with pytest.raises(InvalidInput) as exc:
        make_schedule(workflow, cast.developer, cron="0 * * *", timezone="Mars/Olympus", input={})
    errors = exc.value.errors
    assert errors["cron"] == [
        "Expected 5 fields (minute hour day-of-month month day-of-week), got 4."
    ]
    assert "Unknown time zone 'Mars/Olympus'" in errors["timezone"][0]
    assert errors["input.name"] == ["This field is required."]  # the workflow's input_schema
    assert not Schedule.objects.exists()
    assert not PeriodicTask.objects.exists()


def test_end_must_follow_start(cast, workflow):
    with pytest.raises(InvalidInput) as exc:
        make_schedule(workflow, cast.developer, start_at=T0, end_at=T0)
    assert exc.value.errors == {"end_at": ["Must be after start_at."]}


# --- firing ----------------------------------------------------------------------------------


def fire(schedule, at):
    return schedule_firing.schedule_fire(schedule_id=schedule.pk, now=at)


def runs_of(schedule):
    return Run.objects.filter(workflow=schedule.workflow, trigger="schedule")


def test_a_slot_starts_exactly_one_run(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    first = fire(schedule, T0 + timedelta(seconds=1))
    assert first.status == "started" and first.slot == T0
    # beat fires the entry again, or a second beat fires it: same slot, nothing new
    assert fire(schedule, T0 + timedelta(seconds=1)) is None
    assert fire(schedule, T0 + timedelta(seconds=40)) is None
    assert runs_of(schedule).count() == 1
    run = runs_of(schedule).get()
    assert run.input == {"name": "Ada"} and run.status == "pending"
    schedule.refresh_from_db()
    assert schedule.last_run_id == run.pk
    assert schedule.last_fired_at == T0 + timedelta(seconds=1)
    assert schedule.next_run_at > T0

    run_services.run_cancel(run=run, actor=cast.owner)  # so overlap=skip lets the next one go
    nxt = fire(schedule, T0 + timedelta(hours=1, seconds=2))
    assert nxt.status == "started" and nxt.slot == T0 + timedelta(hours=1)
    assert runs_of(schedule).count() == 2


def test_a_slightly_early_fire_counts_for_the_coming_slot(cast, workflow, settings):
    settings.SPARKOPS_SCHEDULE_CLOCK_SKEW = 2.0
    schedule = make_schedule(workflow, cast.developer)
    assert fire(schedule, T0 - timedelta(seconds=1)).slot == T0
    assert fire(schedule, T0 + timedelta(seconds=3)) is None


def test_paused_workflow_records_why_and_starts_nothing(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    services.workflow_set_status(workflow=workflow, actor=cast.owner, status="paused")
    result = fire(schedule, T0)
    assert (result.status, result.reason, result.run) == (
        "skipped",
        "The workflow is paused.",
        None,
    )
    assert not runs_of(schedule).exists()


def test_disabled_schedule_and_window_are_recorded(cast, workflow):
    schedule = make_schedule(
        workflow, cast.developer, start_at=T0 + timedelta(hours=1), end_at=T0 + timedelta(hours=2)
    )
    assert "before start_at" in fire(schedule, T0).reason
    assert "ended" in fire(schedule, T0 + timedelta(hours=2)).reason
    assert fire(schedule, T0 + timedelta(hours=1)).status == "started"
    schedules.schedule_set_enabled(schedule=schedule, actor=cast.owner, enabled=False)
    assert fire(schedule, T0 + timedelta(hours=3)).reason == "The schedule is disabled."
    assert runs_of(schedule).count() == 1


def test_overlap_skip(cast, workflow):
    schedule = make_schedule(workflow, cast.developer, overlap="skip")
    first = fire(schedule, T0)
    second = fire(schedule, T0 + timedelta(hours=1))
    assert second.status == "skipped"
    assert second.reason == f"The previous run {first.run_id} is still pending."
    assert runs_of(schedule).count() == 1


def test_overlap_allow(cast, workflow):
    schedule = make_schedule(workflow, cast.developer, overlap="allow")
    fire(schedule, T0)
    assert fire(schedule, T0 + timedelta(hours=1)).status == "started"
    assert runs_of(schedule).count() == 2


def test_overlap_queue_starts_the_fire_when_the_previous_run_finishes(cast, workflow):
    schedule = make_schedule(workflow, cast.developer, overlap="queue")
    first = fire(schedule, T0)
    queued = fire(schedule, T0 + timedelta(hours=1))
    assert queued.status == "queued"
    assert queued.reason == f"Waiting for run {first.run_id} to finish."
    # one fire waits; more are skipped while it does
    third = fire(schedule, T0 + timedelta(hours=2))
    assert (third.status, third.reason) == (
        "skipped",
        f"A fire is already queued behind run {first.run_id}.",
    )
    assert runs_of(schedule).count() == 1

    # the previous run finishes (the engine's run_finished signal) → the queued fire starts
    run_services.run_cancel(run=first.run, actor=cast.owner)
    queued.refresh_from_db()
    assert queued.status == "started" and queued.run is not None
    assert runs_of(schedule).count() == 2
    schedule.refresh_from_db()
    assert schedule.last_run_id == queued.run_id


def test_catch_up_after_beat_was_down_starts_one_run_only(cast, workflow, settings):
    settings.SPARKOPS_SCHEDULE_MISFIRE_GRACE = 60
    schedule = make_schedule(workflow, cast.developer, cron="* * * * *", overlap="allow")
    # beat was down for ten minutes and, back, fires several times at once
    back = T0 + timedelta(minutes=10, seconds=30)
    results = [fire(schedule, back) for _ in range(5)]
    started = [r for r in results if r is not None]
    assert len(started) == 1
    assert started[0].slot == T0 + timedelta(minutes=10)
    assert runs_of(schedule).count() == 1


def test_a_late_fire_without_catch_up_is_recorded_as_missed(cast, workflow, settings):
    settings.SPARKOPS_SCHEDULE_MISFIRE_GRACE = 60
    schedule = make_schedule(workflow, cast.developer, catch_up=False)
    missed = fire(schedule, T0 + timedelta(minutes=20))
    assert missed.status == "skipped"
    assert missed.reason == "Missed: fired 1200 s after its time and catch-up is off."
    on_time = fire(schedule, T0 + timedelta(hours=1, seconds=5))
    assert on_time.status == "started"
    assert runs_of(schedule).count() == 1


def test_input_that_no_longer_fits_fails_the_fire_with_the_reason(cast):
    workflow = make_workflow(
        cast.project,
        cast.owner,
        [transform("a", "{{ input.n }}")],
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    )
    schedule = make_schedule(workflow, cast.developer, input={"n": 1})
    services.workflow_update(
        workflow=workflow,
        actor=cast.owner,
        definition={
            "input_schema": {
                "type": "object",
                "properties": {"n": {"type": "string"}},
                "required": ["n"],
            },
            "nodes": [transform("a", "{{ input.n }}")],
        },
    )
    failed = fire(schedule, T0)
    assert failed.status == "failed"
    assert failed.reason.startswith("Invalid run input. input.n:")
    assert not runs_of(schedule).exists()


def test_fire_now_starts_a_manual_run(cast, workflow):
    schedule = make_schedule(workflow, cast.developer, overlap="skip")
    fire(schedule, T0)
    now = schedule_firing.schedule_fire_now(schedule=schedule, actor=cast.owner)
    assert now.manual and now.status == "started"
    assert now.run.trigger == "manual" and now.run.created_by == cast.owner
    assert ScheduleFire.objects.filter(schedule=schedule).count() == 2


def test_a_fire_for_a_deleted_schedule_is_a_no_op(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    pk = schedule.pk
    schedules.schedule_delete(schedule=schedule, actor=cast.owner)
    assert schedule_firing.schedule_fire(schedule_id=pk, now=T0) is None


def test_the_task_is_what_beat_calls(cast, workflow):
    from runs.triggers.tasks import schedule_fire

    # yearly: both calls below surely fall in the same slot (a catch-up, then a repeat)
    schedule = make_schedule(workflow, cast.developer, cron="0 0 1 1 *")
    # as beat would: the registered task, with the PeriodicTask's args, twice
    args = json.loads(task_of(schedule).args)
    assert schedule_fire.name == task_of(schedule).task
    assert schedule_fire(*args) == "started"
    assert schedule_fire(*args) is None
    assert runs_of(schedule).count() == 1
