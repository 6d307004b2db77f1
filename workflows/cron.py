"""Cron expressions of schedules: validation and fire times in a time zone.

An expression is five fields (minute hour day-of-month month day-of-week) that both croniter
(previews, fire slots) and Celery's crontab (what beat fires) accept, so what the preview shows
is what beat does. Two cron dialect differences are refused rather than guessed: `L`, `#`,
`?` and day-of-week `7` (Celery has none of them), and restricting both day-of-month and
day-of-week (cron ORs the two, Celery ANDs them).

Daylight saving time, in the time zone of the schedule (what Vixie cron does):

- spring forward: a wall time that does not exist fires once, at the first instant after the
  gap (`30 2 * * *` fires at 03:00 on the day Europe/Berlin skips 02:00-03:00);
- fall back: an expression with a fixed hour fires once, at the first of the two identical
  wall times; an expression whose hour is a wildcard (`*`, `*/2`) runs by the clock and fires
  in both passes of the repeated hour (hourly stays hourly).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from celery.schedules import crontab
from croniter import croniter
from croniter.croniter import CroniterError

from sparkops.errors import InvalidInput

FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
# `L` (last), `W` (weekday), `#` (nth weekday), `?`: tokens, not letters of month/day names.
_UNSUPPORTED = re.compile(r"(^|[\s,])(\d*L\d*|\d+W|LW)(?=$|[\s,/-])|[#?]", re.IGNORECASE)
MAX_PREVIEW = 100


def _cron_error(message: str) -> InvalidInput:
    return InvalidInput(f"Invalid cron expression: {message}", errors={"cron": [message]})


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    # `localtime` is whatever this machine is set to; the others are not zones to schedule in.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules", "Factory"}


def validate_timezone(name: object) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or name not in _zones():
        message = f"Unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin'."
        raise InvalidInput(f"Invalid time zone: {message}", errors={"timezone": [message]})
    return zoneinfo.ZoneInfo(name)


def validate_cron(expression: object) -> str:
    """The expression, single-spaced; InvalidInput with the reason if it is not one we run."""
    if not isinstance(expression, str) or not expression.strip():
        raise _cron_error("An expression is required, e.g. '*/5 * * * *'.")
    parts = expression.split()
    if len(parts) != 5:
        raise _cron_error(
            f"Expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}."
        )
    normalized = " ".join(parts)
    if not croniter.is_valid(normalized):
        try:
            croniter(normalized)
        except (CroniterError, ValueError, KeyError) as exc:
            raise _cron_error(str(exc) or "Not a valid cron expression.") from None
        raise _cron_error("Not a valid cron expression.")
    if _UNSUPPORTED.search(normalized):
        raise _cron_error("'L', 'W', '#' and '?' are not supported.")
    if re.search(r"(^|[,-])7($|[,-/])", parts[4]):
        raise _cron_error("Day of week 7 is not supported; use 0 for Sunday.")
    if parts[2] != "*" and parts[4] != "*":
        raise _cron_error(
            "Restrict day-of-month or day-of-week, not both (cron and Celery disagree on "
            "whether both or either must match)."
        )
    try:
        crontab(**dict(zip(FIELDS, parts, strict=True)))
    except (ValueError, TypeError) as exc:
        raise _cron_error(f"Not supported by the scheduler: {exc}") from None
    try:
        croniter(normalized, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterError:
        raise _cron_error("The expression never fires.") from None
    return normalized


def crontab_fields(expression: str) -> dict[str, str]:
    """The CrontabSchedule / celery crontab fields of a validated expression."""
    return dict(zip(FIELDS, expression.split(), strict=True))


def _iter_fires(expression: str, tz: zoneinfo.ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after `after`, as aware UTC datetimes, with the DST rules above."""
    hour_is_wildcard = expression.split()[1].startswith("*")
    times = croniter(expression, after.astimezone(tz))
    while True:
        utc = times.get_next(datetime).astimezone(UTC)
        local = utc.astimezone(tz)  # from UTC, so `fold` says which pass of a repeated hour
        if local.fold == 1 and not hour_is_wildcard:
            continue  # the same wall time fired in the first pass already
        if utc <= after:
            continue
        yield utc


def fire_times(
    expression: str,
    tz: zoneinfo.ZoneInfo,
    *,
    after: datetime,
    count: int,
    until: datetime | None = None,
) -> list[datetime]:
    """The next `count` fire times after `after` (and before `until`), in UTC."""
    found: list[datetime] = []
    for moment in _iter_fires(expression, tz, after):
        if until is not None and moment >= until:
            break
        found.append(moment)
        if len(found) >= count:
            break
    return found


def previous_fire_time(expression: str, tz: zoneinfo.ZoneInfo, *, at: datetime) -> datetime | None:
    """The latest fire time at or before `at` (UTC), by the same rules as `fire_times`.

    croniter's own backwards iteration is only a hint of how far back to start (a yearly
    expression may last have fired years ago); the answer comes from walking forward, so both
    directions agree around DST changes."""
    try:
        hint = croniter(expression, at.astimezone(tz)).get_prev(datetime).astimezone(UTC)
    except CroniterError:
        return None
    # Three hours before the hint cover a repeated hour whose first pass the hint skipped.
    start = min(hint, at) - timedelta(hours=3)
    latest = None
    for moment in _iter_fires(expression, tz, start):
        if moment > at:
            break
        latest = moment
    return latest
