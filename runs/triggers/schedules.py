"""Schedules fire: beat's task maps a fire to its slot, records it as a ScheduleFire under a
unique (schedule, slot) constraint, and only the fire that inserts the row starts a run (see
workflows.schedules for the Schedule rows and their beat entries, which need no run)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from projects.models import project_ensure_writable
from runs.models import Run
from runs.services import run_create
from sparkops.audit import audit_record
from sparkops.errors import Conflict, InvalidInput, SparkOpsError
from workflows import cron
from workflows.models import Schedule, ScheduleFire
from workflows.schedules import NOT_RUNNABLE, next_run_at, schedule_set_enabled

logger = logging.getLogger(__name__)

DISABLED = "The schedule is disabled."

# --- firing ----------------------------------------------------------------------------------


def fire_slot(schedule: Schedule, now: datetime) -> datetime | None:
    """The slot a fire at `now` stands for: the latest cron time at or before it (a little
    clock skew between beat and worker allowed)."""
    skew = timedelta(seconds=settings.SPARKOPS_SCHEDULE_CLOCK_SKEW)
    return cron.previous_fire_time(
        schedule.cron, cron.validate_timezone(schedule.timezone), at=now + skew
    )


def _error_text(exc: SparkOpsError) -> str:
    parts = [str(exc.detail)]
    for key, messages in (exc.errors or {}).items():
        listed = messages if isinstance(messages, list) else [messages]
        parts.append(f"{key}: {'; '.join(str(m) for m in listed)}")
    return " ".join(parts)


def _start(fire: ScheduleFire, schedule: Schedule, *, actor: Any, trigger: str) -> None:
    """Create the fire's run (run_create is a savepoint of its own: a refusal is recorded on
    the fire, not raised, and a policy refusal's decisions stay on record with it)."""
    try:
        run = run_create(
            workflow=schedule.workflow, input=schedule.input, actor=actor, trigger=trigger
        )
    except SparkOpsError as exc:
        fire.status = ScheduleFire.Status.FAILED
        fire.reason = _error_text(exc)
        return
    fire.status = ScheduleFire.Status.STARTED
    fire.run = run
    fire.started_at = timezone.now()
    schedule.last_run = run


def _active_run(schedule: Schedule) -> Any:
    run = schedule.last_run
    return run if run is not None and not run.is_finished else None


def _decide(schedule: Schedule, fire: ScheduleFire, now: datetime) -> None:
    late = (now - fire.slot).total_seconds()
    workflow = schedule.workflow
    skip = None
    if not schedule.enabled:
        skip = DISABLED
    elif schedule.start_at and fire.slot < schedule.start_at:
        skip = f"The slot is before start_at ({schedule.start_at:%Y-%m-%d %H:%M:%S %Z})."
    elif schedule.end_at and fire.slot >= schedule.end_at:
        skip = f"The schedule ended at {schedule.end_at:%Y-%m-%d %H:%M:%S %Z}."
    elif workflow.status in NOT_RUNNABLE:
        skip = f"The workflow is {workflow.status}."
    elif workflow.project.is_archived:
        skip = "The project is archived."
    elif late > settings.SPARKOPS_SCHEDULE_MISFIRE_GRACE and not schedule.catch_up:
        skip = f"Missed: fired {late:.0f} s after its time and catch-up is off."
    if skip:
        fire.status = ScheduleFire.Status.SKIPPED
        fire.reason = skip
        return
    active = _active_run(schedule)
    waiting = schedule.fires.filter(status=ScheduleFire.Status.QUEUED).exclude(pk=fire.pk)
    if active is not None and schedule.overlap == Schedule.Overlap.SKIP:
        fire.status = ScheduleFire.Status.SKIPPED
        fire.reason = f"The previous run {active.pk} is still {active.status}."
        return
    if active is not None and schedule.overlap == Schedule.Overlap.QUEUE:
        if waiting.exists():
            fire.status = ScheduleFire.Status.SKIPPED
            fire.reason = f"A fire is already queued behind run {active.pk}."
        else:
            fire.status = ScheduleFire.Status.QUEUED
            fire.reason = f"Waiting for run {active.pk} to finish."
        return
    # Nothing active: a fire still queued lost its wake-up; this fire supersedes it.
    waiting.update(status=ScheduleFire.Status.SKIPPED, reason=f"Superseded by {fire.slot}.")
    if late > settings.SPARKOPS_SCHEDULE_MISFIRE_GRACE:
        fire.reason = f"Catch-up: fired {late:.0f} s after its time."
    _start(fire, schedule, actor=None, trigger=Run.Trigger.SCHEDULE)


def schedule_fire(*, schedule_id: Any, now: datetime | None = None) -> ScheduleFire | None:
    """What beat's task does. Returns the fire recorded, or None when this fire's slot was
    taken already (a double fire) or the schedule is gone."""
    now = now or timezone.now()
    with transaction.atomic():
        # The row lock orders fires of one schedule (overlap checks see the previous run).
        schedule = (
            Schedule.objects.select_for_update(of=("self",))
            .select_related("workflow", "last_run")
            .filter(pk=schedule_id)
            .first()
        )
        if schedule is None:
            return None
        slot = fire_slot(schedule, now)
        if slot is None:
            return None
        try:
            with transaction.atomic():
                fire = ScheduleFire.objects.create(
                    schedule=schedule, slot=slot, fired_at=now, status=ScheduleFire.Status.SKIPPED
                )
        except IntegrityError:
            logger.info("schedule %s: slot %s already fired", schedule_id, slot.isoformat())
            return None
        _decide(schedule, fire, now)
        fire.save(update_fields=["status", "reason", "run", "started_at"])
        schedule.last_fired_at = now
        schedule.next_run_at = next_run_at(schedule, now)
        schedule.save(update_fields=["last_fired_at", "next_run_at", "last_run"])
        return fire


@transaction.atomic
def schedule_fire_now(*, schedule: Schedule, actor: User | None) -> ScheduleFire:
    """Start a run of the schedule now, by hand (admin action): overlap, window and catch-up
    rules do not apply; a paused workflow still refuses (recorded on the fire)."""
    locked = Schedule.objects.select_for_update(of=("self",)).select_related("workflow")
    schedule = locked.get(pk=schedule.pk)
    now = timezone.now()
    fire = ScheduleFire.objects.create(
        schedule=schedule,
        slot=now,
        fired_at=now,
        manual=True,
        status=ScheduleFire.Status.SKIPPED,
    )
    _start(fire, schedule, actor=actor, trigger=Run.Trigger.MANUAL)
    fire.save(update_fields=["status", "reason", "run", "started_at"])
    schedule.last_fired_at = now
    schedule.save(update_fields=["last_fired_at", "last_run"])
    audit_record(
        actor=actor,
        project=schedule.project_id,
        action="schedule.fire_now",
        obj=schedule,
        changes={"run": fire.run_id, "status": fire.status},
    )
    return fire


def schedule_of_run(run: Any) -> Any:
    """The id of the schedule that fired `run`, if one did."""
    return ScheduleFire.objects.filter(run_id=run.pk).values_list("schedule_id", flat=True).first()


def schedule_release_queued(*, run: Any, schedule_id: Any = None) -> ScheduleFire | None:
    """A run finished (engine transaction, run row locked): start the fire queued behind it
    (`schedule_id`: the run's schedule, when the caller read it already). Never raises: a
    refusal is recorded on the fire."""
    if schedule_id is None:
        schedule_id = schedule_of_run(run)
    if schedule_id is None:
        return None
    with transaction.atomic():
        schedule = (
            Schedule.objects.select_for_update(of=("self",))
            .select_related("workflow", "last_run")
            .filter(pk=schedule_id)
            .first()
        )
        if schedule is None or schedule.last_run_id != run.pk:
            return None
        fire = schedule.fires.filter(status=ScheduleFire.Status.QUEUED).order_by("slot").first()
        if fire is None:
            return None
        schedule.last_run = run  # finished now (the caller holds the updated row)
        if not schedule.enabled or schedule.workflow.status in NOT_RUNNABLE:
            fire.status = ScheduleFire.Status.SKIPPED
            fire.reason = (
                "The schedule is disabled."
                if not schedule.enabled
                else f"The workflow is {schedule.workflow.status}."
            )
        else:
            fire.reason = ""
            _start(fire, schedule, actor=None, trigger=Run.Trigger.SCHEDULE)
        fire.save(update_fields=["status", "reason", "run", "started_at"])
        schedule.save(update_fields=["last_run"])
        return fire


# --- resume and backfill ---------------------------------------------------------------------


def _catch_up_on_resume(schedule: Schedule, paused_at: datetime, now: datetime) -> Any:
    """The latest slot missed while the schedule was paused, fired as beat would have (its
    overlap rules apply). A slot beat already recorded as skipped because the schedule was
    disabled is decided again; any other recorded slot stays as it is (one run per slot)."""
    slot = fire_slot(schedule, now)
    if slot is None or slot < paused_at or slot > now:
        return None
    fire = ScheduleFire.objects.filter(schedule=schedule, slot=slot).first()
    if fire is None:
        fire = ScheduleFire.objects.create(
            schedule=schedule, slot=slot, fired_at=now, status=ScheduleFire.Status.SKIPPED
        )
    elif fire.status != ScheduleFire.Status.SKIPPED or fire.reason != DISABLED:
        return None
    fire.fired_at = now
    _decide(schedule, fire, now)
    fire.save(update_fields=["status", "reason", "run", "started_at", "fired_at"])
    schedule.last_fired_at = now
    schedule.save(update_fields=["last_fired_at", "last_run"])
    return fire


@transaction.atomic
def schedule_resume(
    *, schedule: Schedule, actor: Any, now: datetime | None = None
) -> tuple[Schedule, ScheduleFire | None]:
    """Fire again from the next slot on (next_run_at is recomputed). Slots missed while paused
    are not fired, except with catch_up: then the latest one is (one run, never more), as after
    beat was down. Resuming a schedule that is not paused changes nothing. Returns the schedule
    and the catch-up fire, if one was recorded."""
    now = now or timezone.now()
    locked = Schedule.objects.select_for_update(of=("self",)).select_related("workflow", "last_run")
    current = locked.get(pk=schedule.pk)
    if current.enabled:
        return current, None
    paused_at = current.paused_at
    schedule_set_enabled(schedule=current, actor=actor, enabled=True)
    current = locked.get(pk=schedule.pk)
    fire = None
    if current.catch_up and paused_at is not None and current.workflow.status not in NOT_RUNNABLE:
        fire = _catch_up_on_resume(current, paused_at, now)
    changes: dict[str, Any] = {"paused_at": paused_at, "next_run_at": current.next_run_at}
    if fire is not None:
        changes.update(catch_up_slot=fire.slot, catch_up_status=fire.status, run=fire.run_id)
    audit_record(
        actor=actor,
        project=current.project_id,
        action="schedule.resume",
        obj=current,
        changes=changes,
    )
    return current, fire


def _backfill_slots(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    limit = int(settings.SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS)
    errors: dict[str, list[str]] = {}
    if timezone.is_naive(start):
        errors["from"] = ["Must be a date-time with a time zone."]
    if timezone.is_naive(end):
        errors["to"] = ["Must be a date-time with a time zone."]
    elif end > timezone.now():
        errors["to"] = ["Must not be in the future: a backfill fills past slots."]
    if not errors and end < start:
        errors["to"] = ["Must not be before from."]
    if errors:
        raise InvalidInput("Invalid input.", errors=errors)
    tz = cron.validate_timezone(schedule.timezone)
    # `from` and `to` are both included; counting stops past ten times the limit.
    slots = cron.fire_times(
        schedule.cron,
        tz,
        after=start - timedelta(microseconds=1),
        count=10 * limit + 1,
        until=end + timedelta(microseconds=1),
    )
    if len(slots) > limit:
        held = f"{len(slots)}" if len(slots) <= 10 * limit else f"more than {10 * limit}"
        raise InvalidInput(
            f"The range holds {held} slots; a backfill takes at most {limit} "
            "(SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS). Split it.",
            errors={"to": [f"The range holds {held} slots; at most {limit}."]},
        )
    return slots


@transaction.atomic
def schedule_backfill(
    *, schedule: Schedule, actor: Any, start: datetime, end: datetime
) -> dict[str, Any]:
    """One run for every slot of the schedule from `start` to `end` (both included, both past),
    at most SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS of them. Idempotent: a slot that already has a
    run (fired by beat, by an earlier backfill, or queued) is left alone, so calling twice starts
    nothing new; a slot recorded as skipped or failed without a run gets its run now. Overlap,
    window and catch-up rules do not apply (this is asked for by hand); a paused schedule can be
    backfilled, a paused or archived workflow cannot (409)."""
    locked = Schedule.objects.select_for_update(of=("self",)).select_related("workflow", "last_run")
    schedule = locked.get(pk=schedule.pk)
    slots = _backfill_slots(schedule, start, end)
    if schedule.workflow.status in NOT_RUNNABLE:
        raise Conflict(f"The workflow is {schedule.workflow.status}; activate it to backfill.")
    project_ensure_writable(schedule.workflow.project)
    now = timezone.now()
    known = {fire.slot: fire for fire in schedule.fires.filter(slot__in=slots)}
    started: list[ScheduleFire] = []
    kept: list[ScheduleFire] = []
    failed: list[ScheduleFire] = []
    for slot in slots:
        fire = known.get(slot)
        if fire is not None and (fire.run_id or fire.status == ScheduleFire.Status.QUEUED):
            kept.append(fire)
            continue
        if fire is None:
            fire = ScheduleFire(schedule=schedule, slot=slot, status=ScheduleFire.Status.SKIPPED)
        fire.fired_at = now
        fire.manual = True
        fire.reason = f"Backfill of {start.isoformat()} to {end.isoformat()}."
        _start(fire, schedule, actor=actor, trigger=Run.Trigger.SCHEDULE)
        fire.save()
        (started if fire.run_id else failed).append(fire)
    audit_record(
        actor=actor,
        project=schedule.project_id,
        action="schedule.backfill",
        obj=schedule,
        changes={
            "from": start,
            "to": end,
            "slots": len(slots),
            "started": len(started),
            "existing": len(kept),
            "failed": len(failed),
        },
    )
    fires = sorted([*started, *kept, *failed], key=lambda fire: fire.slot)
    return {
        "slots": len(slots),
        "started": len(started),
        "existing": len(kept),
        "failed": len(failed),
        "fires": fires,
    }
