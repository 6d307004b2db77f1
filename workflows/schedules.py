"""Schedules: the only writer of Schedule rows and of their django-celery-beat mirror.

Every Schedule has one PeriodicTask (named `sparkops-schedule-<id>`, task
`workflows.schedule_fire`, args `[<id>]`) and a CrontabSchedule with its cron fields and time
zone. They are written in the same transaction as the Schedule (create, change, enable/disable,
delete, and when the workflow is paused, archived or activated), so the two tables agree;
`schedule_drift()` (the `check_schedules` command) proves it. Edits made to those rows in the
PeriodicTask admin are overwritten by the next sync.

Beat may fire an entry twice, and two beats fire everything twice. A fire is therefore mapped
to its *slot* (the latest cron time at or before now, in the schedule's time zone) and
recorded as a ScheduleFire under a unique (schedule, slot) constraint: only the fire that
inserts the row goes on to start a run. Firing starts runs, so it lives above the engine, in
`runs.triggers.schedules`; this module needs no run.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from accounts.models import User
from sparkops.audit import audit_record
from sparkops.errors import InvalidInput
from sparkops.services import object_update

from . import cron
from .definition import validate_input
from .models import Schedule, Workflow

logger = logging.getLogger(__name__)

TASK_NAME = "workflows.schedule_fire"
TASK_QUEUE = "orchestration"
EDITABLE_FIELDS = frozenset(Schedule.EDITABLE_FIELDS)
NOT_RUNNABLE = (Workflow.Status.PAUSED, Workflow.Status.ARCHIVED)


def periodic_task_name(schedule: Schedule) -> str:
    return f"sparkops-schedule-{schedule.pk}"


# --- validation ------------------------------------------------------------------------------


def schedule_clean(*, workflow: Workflow, fields: dict[str, Any]) -> dict[str, Any]:
    """Checks the fields a create or update sets (the admin form calls this too). Returns them
    cleaned (cron single-spaced). Every problem at once, keyed by field."""
    cleaned = dict(fields)
    errors: dict[str, list[str]] = {}
    detail = "Invalid input."
    if "cron" in cleaned:
        try:
            cleaned["cron"] = cron.validate_cron(cleaned["cron"])
        except InvalidInput as exc:
            errors.update(exc.errors or {})
            detail = exc.detail
    if "timezone" in cleaned:
        try:
            cron.validate_timezone(cleaned["timezone"])
        except InvalidInput as exc:
            errors.update(exc.errors or {})
            detail = exc.detail
    if "name" in cleaned and not str(cleaned["name"] or "").strip():
        errors["name"] = ["A name is required."]
    if "overlap" in cleaned and cleaned["overlap"] not in Schedule.Overlap.values:
        errors["overlap"] = [f"Must be one of: {', '.join(Schedule.Overlap.values)}."]
    for name in ("start_at", "end_at"):
        value = cleaned.get(name)
        if value is not None and (not isinstance(value, datetime) or timezone.is_naive(value)):
            errors[name] = ["Must be a date-time with a time zone."]
    start, end = cleaned.get("start_at"), cleaned.get("end_at")
    if "start_at" not in errors and "end_at" not in errors and start and end and end <= start:
        errors["end_at"] = ["Must be after start_at."]
    if "input" in cleaned:
        value = cleaned["input"]
        if value is None:
            cleaned["input"] = value = {}
        if not isinstance(value, dict):
            errors["input"] = ["Must be a JSON object."]
        else:
            try:
                validate_input(workflow.definition.get("input_schema"), value)
            except InvalidInput as exc:
                errors.update(exc.errors or {})
    if errors:
        raise InvalidInput(detail if len(errors) == 1 else "Invalid input.", errors=errors)
    return cleaned


# --- writes ----------------------------------------------------------------------------------


@transaction.atomic
def schedule_create(
    *,
    actor: User | None,
    workflow: Workflow,
    name: str,
    cron: str,
    timezone: str = "UTC",
    input: dict[str, Any] | None = None,
    **fields: Any,
) -> Schedule:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot set {', '.join(sorted(unknown))}.")
    cleaned = schedule_clean(
        workflow=workflow,
        fields={**fields, "name": name, "cron": cron, "timezone": timezone, "input": input},
    )
    schedule = Schedule.objects.create(
        project_id=workflow.project_id, workflow=workflow, created_by=actor, **cleaned
    )
    schedule_sync(schedule)
    audit_record(
        actor=actor,
        project=workflow.project_id,
        action="schedule.create",
        obj=schedule,
        changes=cleaned,
    )
    return schedule


@transaction.atomic
def schedule_update(*, schedule: Schedule, actor: User | None, **fields: Any) -> Schedule:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")

    def clean(locked: Schedule) -> dict[str, Any]:
        merged = {"start_at": locked.start_at, "end_at": locked.end_at, **fields}
        cleaned = schedule_clean(workflow=locked.workflow, fields=merged)
        changes = {name: value for name, value in cleaned.items() if name in fields}
        # paused_at is "disabled since": what a resume with catch_up counts missed slots from.
        if "enabled" in changes and bool(changes["enabled"]) != locked.enabled:
            changes["paused_at"] = None if changes["enabled"] else timezone.now()
        return changes

    # The workflow's row is locked with it: schedule_sync reads the workflow's status.
    update = object_update(
        schedule,
        actor=actor,
        clean=clean,
        only_changed=False,
        lock=Schedule.objects.select_for_update().select_related("workflow"),
    )
    schedule_sync(schedule)
    audit_record(
        actor=actor,
        project=schedule.project_id,
        action="schedule.update",
        obj=schedule,
        changes=update.changed,
    )
    return schedule


def schedule_set_enabled(*, schedule: Schedule, actor: User | None, enabled: bool) -> Schedule:
    return schedule_update(schedule=schedule, actor=actor, enabled=enabled)


@transaction.atomic
def schedule_pause(*, schedule: Schedule, actor: Any) -> Schedule:
    """Stop firing (the beat entry is disabled; a fire that still comes is recorded as skipped).
    Pausing a paused schedule changes nothing. Resuming is `runs.triggers.schedules
    .schedule_resume`: with catch_up it may start a run, which this layer cannot."""
    was_enabled = (
        Schedule.objects.select_for_update().values_list("enabled", flat=True).get(pk=schedule.pk)
    )
    schedule_update(schedule=schedule, actor=actor, enabled=False)
    if was_enabled:
        audit_record(
            actor=actor, project=schedule.project_id, action="schedule.pause", obj=schedule
        )
    return schedule


@transaction.atomic
def schedule_delete(*, schedule: Schedule, actor: User | None) -> None:
    audit_record(actor=actor, project=schedule.project_id, action="schedule.delete", obj=schedule)
    schedule_unsync(schedule)
    schedule.delete()


# --- the django-celery-beat mirror -----------------------------------------------------------


def _runnable(schedule: Schedule) -> bool:
    workflow = schedule.workflow
    return (
        schedule.enabled
        and workflow.status not in NOT_RUNNABLE
        and not workflow.project.is_archived
    )


def _expected(schedule: Schedule) -> dict[str, Any]:
    return {
        "name": periodic_task_name(schedule),
        "task": TASK_NAME,
        "args": json.dumps([schedule.pk]),
        "kwargs": "{}",
        "queue": TASK_QUEUE,
        "enabled": _runnable(schedule),
        "start_time": schedule.start_at,
        "expires": schedule.end_at,
        "one_off": False,
    }


def _crontab(schedule: Schedule) -> CrontabSchedule:
    fields = cron.crontab_fields(schedule.cron)
    found = CrontabSchedule.objects.filter(**fields, timezone=schedule.timezone).first()
    return found or CrontabSchedule.objects.create(**fields, timezone=schedule.timezone)


def _drop_unused_crontab(crontab_id: int | None) -> None:
    if crontab_id and not PeriodicTask.objects.filter(crontab_id=crontab_id).exists():
        CrontabSchedule.objects.filter(pk=crontab_id).delete()


def next_run_at(schedule: Schedule, now: datetime | None = None) -> datetime | None:
    """The next fire time, or None while the schedule would not fire (disabled, paused, ended)."""
    if not _runnable(schedule):
        return None
    now = now or timezone.now()
    after = now
    if schedule.start_at and schedule.start_at > now:
        after = schedule.start_at - timedelta(microseconds=1)
    times = cron.fire_times(
        schedule.cron,
        cron.validate_timezone(schedule.timezone),
        after=after,
        count=1,
        until=schedule.end_at,
    )
    return times[0] if times else None


def schedule_sync(schedule: Schedule) -> PeriodicTask:
    """Write the schedule's PeriodicTask and CrontabSchedule (and its next_run_at). Call inside
    the transaction that changed the schedule or its workflow."""
    expected = _expected(schedule)
    crontab = _crontab(schedule)
    task = (
        PeriodicTask.objects.filter(pk=schedule.periodic_task_id).first()
        if schedule.periodic_task_id
        else None
    )
    if task is None:
        # A task left behind under our name (e.g. by a half-restored backup) is taken over.
        task = PeriodicTask.objects.filter(name=expected["name"]).first() or PeriodicTask()
    previous_crontab = task.crontab_id
    for name, value in expected.items():
        setattr(task, name, value)
    task.crontab = crontab
    task.interval = task.solar = task.clocked = None
    task.description = f"Spark-Ops schedule {schedule.pk} ({schedule.name}) of workflow " + (
        f"{schedule.workflow_id}. Managed by Spark-Ops: edits here are overwritten."
    )
    task.save()
    if previous_crontab != crontab.pk:
        _drop_unused_crontab(previous_crontab)
    schedule.next_run_at = next_run_at(schedule)
    fields = ["next_run_at"]
    if schedule.periodic_task_id != task.pk:
        schedule.periodic_task = task
        fields.append("periodic_task")
    Schedule.objects.filter(pk=schedule.pk).update(**{f: getattr(schedule, f) for f in fields})
    return task


def schedule_unsync(schedule: Schedule) -> None:
    """Remove the schedule's PeriodicTask (and its crontab if nothing else uses it)."""
    tasks = PeriodicTask.objects.filter(name=periodic_task_name(schedule))
    if schedule.periodic_task_id:
        tasks = tasks | PeriodicTask.objects.filter(pk=schedule.periodic_task_id)
    for task in list(tasks):
        crontab_id = task.crontab_id
        task.delete()  # one by one: PeriodicTask.delete() tells beat to reload
        _drop_unused_crontab(crontab_id)


def schedules_sync_workflow(workflow: Workflow) -> int:
    """The workflow was paused, archived or activated: its schedules follow."""
    count = 0
    for schedule in Schedule.objects.filter(workflow=workflow).select_related("workflow"):
        schedule.workflow = workflow
        schedule_sync(schedule)
        count += 1
    return count


def schedules_sync_project(project: Any) -> int:
    """The project was archived or restored: beat stops or resumes firing its schedules."""
    count = 0
    schedules = Schedule.objects.filter(workflow__project=project).select_related("workflow")
    for schedule in schedules:
        schedule.workflow.project = project
        schedule_sync(schedule)
        count += 1
    return count


@transaction.atomic
def schedules_sync_all() -> int:
    """Re-sync every schedule and remove schedule tasks that belong to no schedule."""
    count = 0
    for schedule in Schedule.objects.select_related("workflow"):
        schedule_sync(schedule)
        count += 1
    known = {periodic_task_name(s) for s in Schedule.objects.only("pk")}
    for task in PeriodicTask.objects.filter(task=TASK_NAME).exclude(name__in=known):
        crontab_id = task.crontab_id
        task.delete()
        _drop_unused_crontab(crontab_id)
    return count


def schedule_drift() -> list[str]:
    """Every difference between the Schedule rows and the PeriodicTask rows mirroring them;
    empty when they agree."""
    problems: list[str] = []
    now = timezone.now()
    tasks = {
        task.name: task
        for task in PeriodicTask.objects.filter(task=TASK_NAME).select_related("crontab")
    }
    by_name = {
        task.name: task
        for task in PeriodicTask.objects.filter(
            name__in=[periodic_task_name(s) for s in Schedule.objects.only("pk")]
        ).select_related("crontab")
    }
    tasks.update(by_name)
    seen: set[str] = set()
    for schedule in Schedule.objects.select_related("workflow"):
        name = periodic_task_name(schedule)
        seen.add(name)
        task = tasks.get(name)
        label = f"schedule {schedule.pk} ({schedule.name})"
        if task is None:
            problems.append(f"{label}: no PeriodicTask {name!r}")
            continue
        if schedule.periodic_task_id != task.pk:
            problems.append(f"{label}: linked to PeriodicTask {schedule.periodic_task_id}")
        for field, value in _expected(schedule).items():
            actual = getattr(task, field)
            if field == "enabled" and schedule.end_at and schedule.end_at <= now:
                continue  # beat disables an expired task itself
            if actual != value:
                problems.append(f"{label}: {field} is {actual!r}, expected {value!r}")
        if task.crontab is None or task.interval_id or task.solar_id or task.clocked_id:
            problems.append(f"{label}: not a crontab task")
            continue
        for field, value in cron.crontab_fields(schedule.cron).items():
            actual = getattr(task.crontab, field)
            if actual != value:
                problems.append(f"{label}: crontab {field} is {actual!r}, expected {value!r}")
        if str(task.crontab.timezone) != schedule.timezone:
            problems.append(
                f"{label}: crontab timezone is {task.crontab.timezone!s}, "
                f"expected {schedule.timezone}"
            )
    for name, task in tasks.items():
        if name not in seen:
            problems.append(f"PeriodicTask {name!r} ({task.pk}) runs {TASK_NAME} for no schedule")
    return problems


# --- previews --------------------------------------------------------------------------------


def schedule_preview(
    *,
    cron_expression: str,
    timezone_name: str,
    count: int = 5,
    after: datetime | None = None,
    until: datetime | None = None,
) -> list[datetime]:
    """The next `count` fire times (UTC) of an expression in a time zone; validates both."""
    errors: dict[str, list[str]] = {}
    expression = tz = None
    try:
        expression = cron.validate_cron(cron_expression)
    except InvalidInput as exc:
        errors.update(exc.errors or {})
    try:
        tz = cron.validate_timezone(timezone_name)
    except InvalidInput as exc:
        errors.update(exc.errors or {})
    if not 1 <= count <= cron.MAX_PREVIEW:
        errors["count"] = [f"Must be from 1 to {cron.MAX_PREVIEW}."]
    if errors or expression is None or tz is None:
        raise InvalidInput("Invalid input.", errors=errors)
    return cron.fire_times(expression, tz, after=after or timezone.now(), count=count, until=until)


def schedule_upcoming(*, schedule: Schedule, count: int = 5) -> list[datetime]:
    """The schedule's next fire times (within start_at/end_at), whether or not it is enabled."""
    now = timezone.now()
    after = now
    if schedule.start_at and schedule.start_at > now:
        after = schedule.start_at - timedelta(microseconds=1)
    return schedule_preview(
        cron_expression=schedule.cron,
        timezone_name=schedule.timezone,
        count=count,
        after=after,
        until=schedule.end_at,
    )
