"""Schedules paused and resumed (no fires while paused; on resume the next slot is
recomputed and missed slots are not fired, except the latest one with catch_up), and backfill
of a past range (one run per slot, at most SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS, idempotent).
The API is `POST /api/v1/schedules/{id}/pause`, `/resume`, `/backfill`; each is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from runs.models import Run
from runs.triggers import schedules as firing
from sparkops.audit import AuditEvent
from workflows import schedules, services
from workflows.models import ScheduleFire
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


def url(schedule, action):
    return f"/api/v1/schedules/{schedule.pk}/{action}"


def runs_of(schedule):
    return Run.objects.filter(workflow=schedule.workflow, trigger="schedule")


def audits(action):
    return list(AuditEvent.objects.filter(action=action).order_by("created_at"))


# --- pause and resume ------------------------------------------------------------------------


def test_pause_stops_firing_and_resume_recomputes_the_next_slot(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    client = cast.client("developer")
    response = client.post(url(schedule, "pause"))
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["enabled"] is False and data["next_run_at"] is None
    assert data["paused_at"] is not None
    task = PeriodicTask.objects.get(name=schedules.periodic_task_name(schedule))
    assert task.enabled is False
    # beat fires anyway (it had not reloaded yet): nothing starts
    fire = firing.schedule_fire(schedule_id=schedule.pk, now=timezone.now())
    assert (fire.status, fire.reason) == ("skipped", "The schedule is disabled.")
    # pausing again changes nothing and records nothing
    assert client.post(url(schedule, "pause")).status_code == 200
    assert len(audits("schedule.pause")) == 1

    schedule.refresh_from_db()
    paused_at = schedule.paused_at
    response = client.post(url(schedule, "resume"))
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["enabled"] is True and data["paused_at"] is None
    assert data["catch_up"] is None  # catch_up is on, but no slot passed while paused
    next_run = datetime.fromisoformat(data["next_run_at"])
    assert next_run > timezone.now() and next_run.minute == 0
    assert PeriodicTask.objects.get(pk=task.pk).enabled is True
    event = audits("schedule.resume")[0]
    assert event.actor_id == cast.developer.pk
    assert event.changes["paused_at"][:19] == paused_at.isoformat()[:19]
    # resuming a running schedule is a no-op
    assert client.post(url(schedule, "resume")).json()["catch_up"] is None
    assert len(audits("schedule.resume")) == 1


def pause_at(schedule, actor, at):
    schedules.schedule_pause(schedule=schedule, actor=actor)
    type(schedule).objects.filter(pk=schedule.pk).update(paused_at=at)


def test_resume_fires_no_missed_slot_without_catch_up(cast, workflow):
    schedule = make_schedule(workflow, cast.developer, cron="* * * * *", catch_up=False)
    pause_at(schedule, cast.developer, timezone.now() - timedelta(minutes=30))
    resumed, fire = firing.schedule_resume(schedule=schedule, actor=cast.developer)
    assert fire is None
    assert not ScheduleFire.objects.filter(schedule=schedule).exists()
    assert not runs_of(schedule).exists()
    assert resumed.next_run_at > timezone.now()


def test_resume_with_catch_up_runs_the_latest_missed_slot_once(cast, workflow, settings):
    settings.SPARKOPS_SCHEDULE_MISFIRE_GRACE = 60
    schedule = make_schedule(workflow, cast.developer, cron="0 * * * *", catch_up=True)
    pause_at(schedule, cast.developer, T0 - timedelta(minutes=30))
    now = T0 + timedelta(hours=5, minutes=20)  # slots 09:00 .. 14:00 missed
    _, fire = firing.schedule_resume(schedule=schedule, actor=cast.developer, now=now)
    assert fire.slot == T0 + timedelta(hours=5) and fire.status == "started"
    assert fire.reason.startswith("Catch-up")
    assert runs_of(schedule).count() == 1
    # beat's own fire of that slot, arriving now, starts nothing more
    assert firing.schedule_fire(schedule_id=schedule.pk, now=now) is None
    assert runs_of(schedule).count() == 1


def test_resume_catches_up_a_slot_beat_skipped_while_paused(cast, workflow, settings):
    schedule = make_schedule(workflow, cast.developer, cron="0 * * * *", catch_up=True)
    pause_at(schedule, cast.developer, T0 - timedelta(minutes=30))
    skipped = firing.schedule_fire(schedule_id=schedule.pk, now=T0)
    assert skipped.reason == "The schedule is disabled."
    _, fire = firing.schedule_resume(
        schedule=schedule, actor=cast.developer, now=T0 + timedelta(minutes=10)
    )
    assert fire.pk == skipped.pk and fire.status == "started"
    assert runs_of(schedule).count() == 1


def test_resume_does_not_catch_up_a_slot_from_before_the_pause(cast, workflow):
    schedule = make_schedule(workflow, cast.developer, cron="0 * * * *", catch_up=True)
    pause_at(schedule, cast.developer, T0 + timedelta(minutes=30))
    _, fire = firing.schedule_resume(
        schedule=schedule, actor=cast.developer, now=T0 + timedelta(minutes=50)
    )
    assert fire is None and not runs_of(schedule).exists()


def test_patching_enabled_pauses_and_resumes_too(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    client = cast.client("developer")
    data = client.patch(f"/api/v1/schedules/{schedule.pk}", {"enabled": False}, format="json")
    assert data.json()["paused_at"] is not None
    data = client.patch(f"/api/v1/schedules/{schedule.pk}", {"enabled": True}, format="json")
    assert data.json()["paused_at"] is None


def test_viewer_cannot_pause_resume_or_backfill(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    for action in ("pause", "resume", "backfill"):
        assert cast.client("viewer").post(url(schedule, action)).status_code == 403
        assert cast.client("outsider").post(url(schedule, action)).status_code == 404


# --- backfill --------------------------------------------------------------------------------


def backfill(cast, schedule, start, end, who="developer"):
    body = {"from": start.isoformat(), "to": end.isoformat()}
    return cast.client(who).post(url(schedule, "backfill"), body, format="json")


def test_backfill_starts_one_run_per_slot_and_twice_starts_nothing_new(cast, workflow):
    schedule = make_schedule(workflow, cast.developer, overlap="skip")
    response = backfill(cast, schedule, T0, T0 + timedelta(hours=3))  # 09:00 .. 12:00 included
    assert response.status_code == 200, response.content
    data = response.json()
    assert (data["slots"], data["started"], data["existing"], data["failed"]) == (4, 4, 0, 0)
    slots = [datetime.fromisoformat(f["slot"]) for f in data["fires"]]
    assert slots == [T0 + timedelta(hours=h) for h in range(4)]
    assert all(f["manual"] and f["status"] == "started" for f in data["fires"])
    runs = runs_of(schedule)
    assert runs.count() == 4
    assert all(r.input == {"name": "Ada"} and r.created_by == cast.developer for r in runs)

    again = backfill(cast, schedule, T0 - timedelta(hours=1), T0 + timedelta(hours=3)).json()
    assert (again["slots"], again["started"], again["existing"]) == (5, 1, 4)
    assert runs_of(schedule).count() == 5
    events = audits("schedule.backfill")
    assert [e.changes["started"] for e in events] == [4, 1]
    assert events[0].changes["slots"] == 4


def test_backfill_runs_a_slot_beat_skipped_and_leaves_one_it_started(cast, workflow, settings):
    settings.SPARKOPS_SCHEDULE_MISFIRE_GRACE = 60
    schedule = make_schedule(workflow, cast.developer, catch_up=False, overlap="allow")
    missed = firing.schedule_fire(schedule_id=schedule.pk, now=T0 + timedelta(minutes=20))
    assert missed.status == "skipped"
    on_time = firing.schedule_fire(schedule_id=schedule.pk, now=T0 + timedelta(hours=1))
    assert on_time.status == "started"
    data = backfill(cast, schedule, T0, T0 + timedelta(hours=1)).json()
    assert (data["started"], data["existing"]) == (1, 1)
    missed.refresh_from_db()
    assert missed.status == "started" and missed.run_id is not None
    assert runs_of(schedule).count() == 2


def test_backfill_over_the_limit_is_400_naming_the_count(cast, workflow, settings):
    settings.SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS = 10
    schedule = make_schedule(workflow, cast.developer)
    response = backfill(cast, schedule, T0, T0 + timedelta(hours=11))
    assert response.status_code == 400
    assert response.json()["detail"].startswith(
        "The range holds 12 slots; a backfill takes at most 10"
    )
    huge = backfill(cast, schedule, T0, T0 + timedelta(days=30))
    assert "more than 100 slots" in huge.json()["detail"]
    assert not runs_of(schedule).exists()
    assert backfill(cast, schedule, T0, T0 + timedelta(hours=9)).json()["started"] == 10


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "from"),
        ({"from": "yesterday", "to": "2025-06-02T10:00:00Z"}, "from"),
        ({"from": "2025-06-02T10:00:00Z", "to": "2025-06-02T09:00:00Z"}, "to"),
        ({"from": "2025-06-02T10:00:00Z", "to": "2999-01-01T00:00:00Z"}, "to"),
    ],
)
def test_bad_backfill_ranges_are_400_naming_the_field(cast, workflow, body, field):
    schedule = make_schedule(workflow, cast.developer)
    response = cast.client("developer").post(url(schedule, "backfill"), body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


def test_backfill_of_a_paused_workflow_is_409(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    services.workflow_set_status(workflow=workflow, actor=cast.owner, status="paused")
    response = backfill(cast, schedule, T0, T0 + timedelta(hours=1))
    assert response.status_code == 409
    assert "paused" in response.json()["detail"]


def test_a_paused_schedule_can_be_backfilled(cast, workflow):
    schedule = make_schedule(workflow, cast.developer)
    schedules.schedule_pause(schedule=schedule, actor=cast.developer)
    assert backfill(cast, schedule, T0, T0).json()["started"] == 1


def test_backfill_ignores_the_window_and_overlap(cast, workflow):
    schedule = make_schedule(
        workflow, cast.developer, overlap="skip", start_at=T0 + timedelta(days=1)
    )
    data = backfill(cast, schedule, T0, T0 + timedelta(hours=1)).json()
    assert (data["started"], data["failed"]) == (2, 0)
