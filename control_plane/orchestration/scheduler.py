"""The scheduler: creates the runs of deployments' schedules ahead of time.

For every schedule of a deployment that is not paused it keeps runs for the upcoming firings
(``schedules.upcoming``: the next 3, and every firing within the next hour, at most 100). Each
run's idempotency key derives from the schedule's name and the firing time, and keys are unique
per deployment, so a restart, a second pass or a race with itself never creates a duplicate.

It wakes when a deployment changes (upsert, pause, resume) and otherwise sleeps until the
soonest next firing, when the horizon moves. Changing a schedule, or what its runs copy from
the deployment (parameters, queue, retries...), or pausing it, removes the future runs it
created that have not started (see ``redeploy.stale_schedules`` and ``Schedules.pause``);
the next pass creates what the new definition asks for. Other changes keep those runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.errors import FlowyardError, InvalidArgument, NotFound
from control_plane.models import Deployment, Run, Schedule
from control_plane.orchestration import clock, schedules, validation
from control_plane.orchestration.cluster import Singleton
from control_plane.orchestration.loops import WakeLoop
from control_plane.orchestration.runs import RunRequest, Runs
from control_plane.store import catalog as catalog_repo
from control_plane.store import runs as runs_repo
from control_plane.store.db import Database

log = logging.getLogger(__name__)

#: Upper bound on one sleep, so that a clock jump cannot stall the scheduler for long.
MAX_SLEEP_SECONDS = 300.0
MAX_UPCOMING = 100
DEFAULT_UPCOMING = 5


class Scheduler:
    """Keeps the upcoming runs of every active schedule created."""

    def __init__(self, db: Database, runs: Runs, lease: Singleton | None = None) -> None:
        self._db = db
        self._runs = runs
        #: With several replicas, only the holder of this lease schedules.
        self._lease = lease
        if lease is not None:
            lease.on_gained(self.wake)
        self._loop = WakeLoop(
            lambda: self._db.shielded(self.schedule_once(), counted=False),
            what="scheduling",
            max_sleep_seconds=MAX_SLEEP_SECONDS,
        )

    def wake(self) -> None:
        """Look at every schedule again now (a deployment changed)."""
        self._loop.wake()

    async def run(self) -> None:
        """Schedule until cancelled."""
        await self._loop.run()

    async def schedule_once(self) -> datetime | None:
        """One pass: create missing upcoming runs; returns the soonest next firing."""
        if self._lease is not None and not self._lease.held:
            return None
        now = clock.now()
        async with self._db.read() as conn:
            deployments = await catalog_repo.list_deployments(conn)
        soonest: datetime | None = None
        for deployment in deployments:
            if deployment.scheduling.paused:
                continue
            for schedule in deployment.scheduling.schedules:
                if schedule.paused:
                    continue
                times = schedules.upcoming(schedule, now)
                for when in times:
                    await self._create(deployment, schedule, when)
                if times and (soonest is None or times[0] < soonest):
                    soonest = times[0]
        return soonest

    async def _create(self, deployment: Deployment, schedule: Schedule, when: datetime) -> None:
        request = RunRequest(
            deployment_name=deployment.name,
            parameters_json=json.dumps(schedule.parameters) if schedule.parameters else "",
            idempotency_key=schedules.idempotency_key(schedule.name, when),
            scheduled_at=when,
            schedule_name=schedule.name,
            schedule=schedule,
        )
        try:
            run, created = await self._runs.create(request)
        except FlowyardError as error:
            # The deployment changed under us (deleted, parameters no longer valid): the
            # next pass sees it as it is now.
            log.warning(
                "schedule %s of deployment %s: no run for %s: %s",
                schedule.name,
                deployment.name,
                when.isoformat(),
                error,
            )
            return
        if created:
            log.info(
                "schedule %s of deployment %s: run %s due %s",
                schedule.name,
                deployment.name,
                run.id,
                when.isoformat(),
            )


@dataclass(frozen=True)
class ScheduleStatus:
    """One schedule, when it fires next, and the runs already created for it."""

    schedule: Schedule
    next_times: list[datetime]
    runs: list[Run]


class Schedules:
    """Pausing and listing schedules, for users."""

    def __init__(self, db: Database, changed: Callable[[], None]) -> None:
        self._db = db
        # Wakes the scheduler: resumed schedules need their runs created.
        self._changed = changed

    async def pause(self, name: str, schedule_name: str, paused: bool) -> Deployment:
        """Pause or resume a deployment or one of its schedules.

        Pausing removes the future runs the paused schedules created that have not started.
        """
        validation.deployment_name(name)
        now = clock.now()
        async with self._db.write() as conn:
            deployment = await _deployment(conn, name)
            scheduling = deployment.scheduling
            if schedule_name:
                names = [s.name for s in scheduling.schedules]
                if schedule_name not in names:
                    raise NotFound(
                        f"schedule_name: deployment {name!r} has no schedule {schedule_name!r} "
                        f"(its schedules: {', '.join(names) or 'none'})"
                    )
                scheduling = dataclasses.replace(
                    scheduling,
                    schedules=tuple(
                        dataclasses.replace(s, paused=paused) if s.name == schedule_name else s
                        for s in scheduling.schedules
                    ),
                )
            else:
                scheduling = dataclasses.replace(scheduling, paused=paused)
            deployment = dataclasses.replace(deployment, scheduling=scheduling, updated_at=now)
            await catalog_repo.set_paused(conn, deployment)
            if paused:
                await runs_repo.delete_future_scheduled(
                    conn, deployment.id, now, schedule_name or None
                )
        self._changed()
        return deployment

    async def list(self, name: str, upcoming: int) -> tuple[Deployment, list[ScheduleStatus]]:
        """Each schedule of a deployment with its next firings and its created runs."""
        validation.deployment_name(name, "deployment_name")
        if not 0 <= upcoming <= MAX_UPCOMING:
            raise InvalidArgument(
                f"upcoming: must be between 1 and {MAX_UPCOMING} (0 for {DEFAULT_UPCOMING}), "
                f"got {upcoming}"
            )
        count = upcoming or DEFAULT_UPCOMING
        now = clock.now()
        result: list[ScheduleStatus] = []
        async with self._db.read() as conn:
            deployment = await _deployment(conn, name)
            for schedule in deployment.scheduling.schedules:
                active = not (schedule.paused or deployment.scheduling.paused)
                result.append(
                    ScheduleStatus(
                        schedule,
                        schedules.next_times(schedule, now, count) if active else [],
                        await runs_repo.scheduled_runs(
                            conn, deployment.id, schedule.name, schedules.MAX_HORIZON_RUNS
                        ),
                    )
                )
        return deployment, result


async def _deployment(conn: AsyncConnection, name: str) -> Deployment:
    deployment = await catalog_repo.get_deployment(conn, name=name)
    if deployment is None:
        raise NotFound(f"deployment {name!r} not found")
    return deployment
