"""The schedules API: CRUD (developer+), cron and time zone validation with reasons, DST-correct
previews (Europe/Berlin spring forward and fall back), fires, and constant query counts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from django_celery_beat.models import PeriodicTask

from conftest import client_for
from runs.triggers import schedules as schedule_firing
from workflows import cron, schedules
from workflows.models import Schedule
from workflows.tests.factories import WorkflowFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/schedules/"


@pytest.fixture
def workflow(cast):
    return WorkflowFactory(project=cast.project, created_by=cast.owner)


def body(workflow, **overrides):
    return {
        "workflow": workflow.pk,
        "name": "nightly",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "input": {"name": "Ada"},
        **overrides,
    }


def local_times(response):
    return [t["local"] for t in response.json()["fire_times"]]


# --- cron validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * * *", "Expected 5 fields (minute hour day-of-month month day-of-week), got 4."),
        ("* * * * * *", "Expected 5 fields (minute hour day-of-month month day-of-week), got 6."),
        ("@hourly", "Expected 5 fields (minute hour day-of-month month day-of-week), got 1."),
        ("61 * * * *", "out of range"),
        ("0 25 * * *", "out of range"),
        ("0 0 L * *", "'L', 'W', '#' and '?' are not supported."),
        ("0 0 * * 1#2", "'L', 'W', '#' and '?' are not supported."),
        ("0 0 * * 7", "Day of week 7 is not supported; use 0 for Sunday."),
        ("0 0 1 * 1", "Restrict day-of-month or day-of-week, not both"),
        ("0 0 30 2 *", "never occurs"),
        ("", "An expression is required"),
    ],
)
def test_invalid_cron_is_400_with_the_reason(cast, workflow, expression, reason):
    response = cast.client("developer").post(URL, body(workflow, cron=expression))
    assert response.status_code == 400, response.content
    assert response.json()["type"] == "validation_error"
    assert reason in response.json()["errors"]["cron"][0]
    preview = cast.client("viewer").post(f"{URL}preview", {"cron": expression})
    assert preview.status_code == 400
    assert reason in preview.json()["errors"]["cron"][0]


@pytest.mark.parametrize(
    "expression",
    ["*/5 * * * *", "0 9 * * mon-fri", "15,45 8-18/2 * jan-jun *", "0 0 1 * *", "0 12 * * 0"],
)
def test_valid_cron(expression):
    assert cron.validate_cron(expression) == expression


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "Europe/../etc/passwd", "localtime"])
def test_invalid_timezone_is_400(cast, workflow, zone):
    response = cast.client("developer").post(URL, body(workflow, timezone=zone))
    assert response.status_code == 400
    assert "Unknown time zone" in response.json()["errors"]["timezone"][0]


# --- DST previews ----------------------------------------------------------------------------


def preview(cast, expression, start, count=5, zone="Europe/Berlin"):
    response = cast.client("viewer").post(
        f"{URL}preview",
        {"cron": expression, "timezone": zone, "count": count, "start": start},
        format="json",
    )
    assert response.status_code == 200, response.content
    return response


def test_spring_forward_hourly_skips_the_missing_hour(cast):
    # 2025-03-30: Europe/Berlin jumps from 02:00 CET to 03:00 CEST
    response = preview(cast, "0 * * * *", "2025-03-29T23:30:00+01:00", count=4)
    assert local_times(response) == [
        "2025-03-30T00:00:00+01:00",
        "2025-03-30T01:00:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-30T04:00:00+02:00",
    ]
    # ...which are consecutive hours in UTC: nothing skipped, nothing doubled
    utc = [
        datetime.fromisoformat(t["at"].replace("Z", "+00:00"))
        for t in response.json()["fire_times"]
    ]
    assert [b - a for a, b in itertools.pairwise(utc)] == [timedelta(hours=1)] * 3


def test_spring_forward_fixed_time_in_the_gap_fires_once_after_it(cast):
    response = preview(cast, "30 2 * * *", "2025-03-28T12:00:00+01:00", count=4)
    assert local_times(response) == [
        "2025-03-29T02:30:00+01:00",
        "2025-03-30T03:00:00+02:00",  # 02:30 does not exist that day
        "2025-03-31T02:30:00+02:00",
        "2025-04-01T02:30:00+02:00",
    ]


def test_fall_back_fixed_time_fires_once(cast):
    # 2025-10-26: 03:00 CEST becomes 02:00 CET; 02:30 happens twice
    response = preview(cast, "30 2 * * *", "2025-10-25T12:00:00+02:00", count=3)
    assert local_times(response) == [
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
        "2025-10-28T02:30:00+01:00",
    ]


def test_fall_back_hourly_fires_in_both_passes_of_the_repeated_hour(cast):
    response = preview(cast, "0 * * * *", "2025-10-26T00:30:00+02:00", count=4)
    assert local_times(response) == [
        "2025-10-26T01:00:00+02:00",
        "2025-10-26T02:00:00+02:00",
        "2025-10-26T02:00:00+01:00",
        "2025-10-26T03:00:00+01:00",
    ]
    assert [t["at"] for t in response.json()["fire_times"]] == [
        "2025-10-25T23:00:00Z",
        "2025-10-26T00:00:00Z",
        "2025-10-26T01:00:00Z",
        "2025-10-26T02:00:00Z",
    ]


def test_fire_slot_agrees_with_the_preview_across_fall_back():
    tz = cron.validate_timezone("Europe/Berlin")
    # the second 02:40 (CET) belongs to the first 02:30 (CEST): the daily job already ran
    at = datetime(2025, 10, 26, 1, 40, tzinfo=UTC)
    assert cron.previous_fire_time("30 2 * * *", tz, at=at) == datetime(
        2025, 10, 26, 0, 30, tzinfo=UTC
    )
    assert cron.previous_fire_time("0 * * * *", tz, at=at) == datetime(
        2025, 10, 26, 1, 0, tzinfo=UTC
    )
    spring = datetime(2025, 3, 30, 1, 10, tzinfo=UTC)  # 03:10 CEST
    assert cron.previous_fire_time("30 2 * * *", tz, at=spring) == datetime(
        2025, 3, 30, 1, 0, tzinfo=UTC
    )


def test_preview_count_is_bounded(cast):
    response = cast.client("viewer").post(f"{URL}preview", {"cron": "* * * * *", "count": 500})
    assert response.status_code == 400
    assert response.json()["errors"]["count"] == ["Must be from 1 to 100."]


def test_schedule_preview_respects_start_and_end(cast, workflow):
    start = datetime.now(UTC) + timedelta(days=1)
    schedule = schedules.schedule_create(
        actor=cast.owner,
        workflow=workflow,
        name="window",
        cron="0 * * * *",
        input={"name": "x"},
        start_at=start,
        end_at=start + timedelta(hours=3),
    )
    response = cast.client("viewer").get(f"{URL}{schedule.pk}/preview?count=10")
    assert response.status_code == 200
    times = response.json()["fire_times"]
    assert len(times) == 3
    assert cast.client("viewer").get(f"{URL}{schedule.pk}/preview?count=x").status_code == 400


# --- CRUD ------------------------------------------------------------------------------------


def test_developer_creates_updates_and_deletes(cast, workflow):
    client = cast.client("developer")
    response = client.post(URL, body(workflow))
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["project"] == str(cast.project.pk)
    assert data["overlap"] == "skip" and data["catch_up"] is True and data["enabled"] is True
    assert data["next_run_at"] is not None
    schedule = Schedule.objects.get(pk=data["id"])
    assert PeriodicTask.objects.filter(pk=schedule.periodic_task_id, enabled=True).exists()

    response = client.patch(f"{URL}{schedule.pk}/", {"enabled": False, "cron": "*/10 * * * *"})
    assert response.status_code == 200, response.content
    assert response.json()["next_run_at"] is None
    task = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert task.enabled is False and task.crontab.minute == "*/10"

    other = WorkflowFactory(project=cast.project, created_by=cast.owner)
    response = client.patch(f"{URL}{schedule.pk}/", {"workflow": other.pk})
    assert response.status_code == 400
    assert response.json()["errors"] == {"workflow": ["Cannot be changed."]}

    assert client.delete(f"{URL}{schedule.pk}/").status_code == 204
    assert not PeriodicTask.objects.filter(task="workflows.schedule_fire").exists()
    assert schedules.schedule_drift() == []


def test_input_is_checked_against_the_input_schema(cast, workflow):
    response = cast.client("developer").post(URL, body(workflow, input={"name": 5}))
    assert response.status_code == 400
    assert response.json()["errors"] == {"input.name": ["Must be of type string."]}


def test_viewer_reads_but_cannot_write(cast, workflow):
    assert cast.client("viewer").post(URL, body(workflow)).status_code == 403
    schedule = schedules.schedule_create(
        actor=cast.owner, workflow=workflow, name="x", cron="0 * * * *", input={"name": "a"}
    )
    viewer = cast.client("viewer")
    assert viewer.get(f"{URL}{schedule.pk}/").status_code == 200
    assert viewer.patch(f"{URL}{schedule.pk}/", {"enabled": False}).status_code == 403
    assert cast.client("outsider").get(f"{URL}{schedule.pk}/").status_code == 404


def test_outsider_cannot_schedule_a_workflow_of_another_project(cast, workflow):
    response = cast.client("outsider").post(URL, body(workflow))
    assert response.status_code == 400
    assert "workflow" in response.json()["errors"]


def test_fires_list(cast, workflow):
    schedule = schedules.schedule_create(
        actor=cast.owner, workflow=workflow, name="x", cron="0 * * * *", input={"name": "a"}
    )
    t0 = datetime(2025, 1, 1, 10, 0, 5, tzinfo=UTC)
    schedule_firing.schedule_fire(schedule_id=schedule.pk, now=t0)
    schedule_firing.schedule_fire(schedule_id=schedule.pk, now=t0 + timedelta(hours=1))
    response = cast.client("viewer").get(f"{URL}{schedule.pk}/fires/")
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["skipped", "started"]
    assert results[0]["reason"].startswith("The previous run")


# --- query counts ----------------------------------------------------------------------------


def test_schedule_list_query_count_is_constant(cast, workflow, django_assert_num_queries):
    client = client_for(cast.viewer)

    def add():
        schedules.schedule_create(
            actor=cast.owner, workflow=workflow, name="s", cron="0 * * * *", input={"name": "a"}
        )

    add()
    # auth user, count, page of schedules (project joined; workflow and runs are plain ids)
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 1
    for _ in range(10):
        add()
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 11


def test_fires_list_query_count_is_constant(cast, workflow, django_assert_num_queries):
    client = client_for(cast.viewer)
    schedule = schedules.schedule_create(
        actor=cast.owner,
        workflow=workflow,
        name="s",
        cron="0 * * * *",
        input={"name": "a"},
        overlap="allow",
    )
    t0 = datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)
    schedule_firing.schedule_fire(schedule_id=schedule.pk, now=t0)
    url = f"{URL}{schedule.pk}/fires/"
    # auth user, schedule with its project (membership subquery), role check, count, page
    with django_assert_num_queries(5):
        assert client.get(url).json()["count"] == 1
    for hour in range(1, 11):
        schedule_firing.schedule_fire(schedule_id=schedule.pk, now=t0 + timedelta(hours=hour))
    with django_assert_num_queries(5):
        assert client.get(url).json()["count"] == 11
