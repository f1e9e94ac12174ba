"""Schedules as pure logic: validate them, and compute when they fire.

Cron expressions are read in their time zone's wall clock (``croniter`` parses and steps them
over naive local times; ``zoneinfo`` turns each local time into an instant), so a schedule
"0 9 * * *" in Europe/Paris fires at 09:00 Paris time in winter and in summer. Across a DST
change:

- a local time that does not exist (the hour skipped in spring) fires once, shifted by the
  size of the gap (02:30 becomes 03:30), as PEP 495 resolves such times;
- a local time that happens twice (the hour repeated in autumn) fires once, at its first
  occurrence.

Intervals are plain durations from an anchor instant and ignore zones.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from croniter import CroniterBadDateError, croniter

from control_plane.errors import FlowyardError, InvalidArgument
from control_plane.models import Schedule, Scheduling
from control_plane.orchestration import validation

MAX_SCHEDULES = 20
MAX_RETRIES = 100
MAX_RETRY_DELAY_SECONDS = 86_400
MAX_CRON_CHARS = 200
MAX_SCHEDULE_NAME_CHARS = 100
#: Intervals above ten years overflow date arithmetic near the end of the calendar.
MAX_INTERVAL_SECONDS = 10 * 365 * 86_400
#: How far ahead the scheduler creates runs: at least this many per schedule ...
HORIZON_RUNS = 3
#: ... and at least every run due within this time ...
HORIZON = timedelta(hours=1)
#: ... but never more than this many per schedule (an interval of one second).
MAX_HORIZON_RUNS = 100
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check(scheduling: Scheduling, field: str = "deployment") -> None:
    """INVALID_ARGUMENT naming the field (and the schedule) for anything a user got wrong."""
    if not 0 <= scheduling.retries <= MAX_RETRIES:
        raise InvalidArgument(
            f"{field}.retries: must be between 0 and {MAX_RETRIES}, got {scheduling.retries}"
        )
    if not 0 <= scheduling.retry_delay_seconds <= MAX_RETRY_DELAY_SECONDS:
        raise InvalidArgument(
            f"{field}.retry_delay_seconds: must be between 0 and {MAX_RETRY_DELAY_SECONDS}, "
            f"got {scheduling.retry_delay_seconds}"
        )
    validation.concurrency_limit(scheduling.concurrency_limit, f"{field}.concurrency_limit")
    validation.pool_name(scheduling.queue, f"{field}.queue")
    if len(scheduling.schedules) > MAX_SCHEDULES:
        raise InvalidArgument(
            f"{field}.schedules: at most {MAX_SCHEDULES} schedules ({len(scheduling.schedules)})"
        )
    seen: set[str] = set()
    for index, schedule in enumerate(scheduling.schedules):
        where = f"{field}.schedules[{index}] ({schedule.name!r})"
        if schedule.name in seen:
            raise InvalidArgument(
                f"{where}: duplicate schedule name {schedule.name!r}; names must be unique "
                "within a deployment"
            )
        seen.add(schedule.name)
        check_schedule(schedule, where)


def check_parameters(
    scheduling: Scheduling,
    defaults: dict[str, object],
    schema: dict[str, object] | None,
    flow: str,
) -> None:
    """Every schedule's runs must satisfy the flow's parameters: INVALID_ARGUMENT naming the
    schedule otherwise (a run it would create could never start)."""
    for index, schedule in enumerate(scheduling.schedules):
        try:
            validation.parameters({**defaults, **schedule.parameters}, schema, flow)
        except FlowyardError as error:
            raise InvalidArgument(
                f"deployment.schedules[{index}] ({schedule.name!r}): its runs would be refused: "
                f"{error}; give the parameter in the deployment's or the schedule's parameters"
            ) from None


def check_schedule(schedule: Schedule, where: str) -> None:
    """INVALID_ARGUMENT saying what is wrong with one schedule."""
    validation.deployment_name(schedule.name, f"{where}.name")
    if schedule.cron:
        validation.text(schedule.cron, f"{where}.cron.expression", MAX_CRON_CHARS)
        if len(schedule.cron.split()) != 5 or not croniter.is_valid(schedule.cron):
            raise InvalidArgument(
                f"{where}.cron.expression: {validation.shown(schedule.cron)} is not a five-field "
                "cron expression (minute hour day-of-month month day-of-week, e.g. '0 6 * * 1-5')"
            )
        if schedule.timezone:
            zone(schedule.timezone, f"{where}.cron.timezone")
        if not next_times(schedule, EPOCH, 1):
            raise InvalidArgument(
                f"{where}.cron.expression: {validation.shown(schedule.cron)} never fires "
                "(e.g. a day that no month has)"
            )
    elif schedule.interval_seconds:
        if not 1 <= schedule.interval_seconds <= MAX_INTERVAL_SECONDS:
            raise InvalidArgument(
                f"{where}.interval.seconds: must be between 1 and {MAX_INTERVAL_SECONDS}, "
                f"got {schedule.interval_seconds}"
            )
    else:
        raise InvalidArgument(
            f"{where}: set cron (an expression and a time zone) or interval (seconds >= 1)"
        )


def zone(name: str, field: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; INVALID_ARGUMENT naming ``field`` if there is none."""
    try:
        return _zone(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(
            f"{field}: {validation.shown(name)} is not an IANA time zone "
            "(e.g. 'UTC', 'Europe/Paris', 'America/New_York')"
        ) from None


@lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def fire_times(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """The schedule's firing instants (UTC) strictly after ``after``, soonest first, until the
    end of the calendar (or never, for a cron that names no existing day)."""
    try:
        if schedule.cron:
            yield from _cron_times(schedule.cron, _zone(schedule.timezone or "UTC"), after)
        else:
            yield from _interval_times(schedule.interval_seconds, schedule.anchor or EPOCH, after)
    except (OverflowError, CroniterBadDateError):
        return


def upcoming(schedule: Schedule, now: datetime) -> list[datetime]:
    """The firings the scheduler keeps runs for: the next HORIZON_RUNS, and every one within
    HORIZON, at most MAX_HORIZON_RUNS."""
    times: list[datetime] = []
    for when in fire_times(schedule, now):
        if len(times) >= MAX_HORIZON_RUNS:
            break
        if len(times) >= HORIZON_RUNS and when > now + HORIZON:
            break
        times.append(when)
    return times


def next_times(schedule: Schedule, now: datetime, count: int) -> list[datetime]:
    """The next ``count`` firings after ``now``."""
    times: list[datetime] = []
    for when in fire_times(schedule, now):
        if len(times) >= count:
            break
        times.append(when)
    return times


def _cron_times(expression: str, tz: zoneinfo.ZoneInfo, after: datetime) -> Iterator[datetime]:
    # Step over wall-clock times without a zone, so croniter never sees a DST change; each
    # wall time is then placed in the zone (fold=0: the first of a repeated time).
    local = after.astimezone(tz).replace(tzinfo=None)
    steps = croniter(expression, local)
    previous = after
    while True:
        wall: datetime = steps.get_next(datetime)
        instant = _resolve(wall, tz)
        if instant > previous:
            previous = instant
            yield instant


def _resolve(wall: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    instant = wall.replace(tzinfo=tz).astimezone(UTC)
    # A wall time in a spring gap does not round-trip: PEP 495 moves it forward by the gap.
    return instant


def _interval_times(seconds: int, anchor: datetime, after: datetime) -> Iterator[datetime]:
    step = timedelta(seconds=seconds)
    if after < anchor:
        when = anchor
    else:
        elapsed = (after - anchor) // step
        when = anchor + (elapsed + 1) * step
    while True:
        yield when
        when += step


def idempotency_key(schedule_name: str, when: datetime) -> str:
    """The key of the run a schedule creates for one firing: a restart creates no duplicate."""
    return f"schedule:{schedule_name}:{when.astimezone(UTC).isoformat()}"
