"""The reaper: time-based rules that keep runs from hanging.

- **Silent engines.** A RUNNING run whose engine has not heartbeated for ``engine_grace``
  becomes CRASHED with the time of its last sign of life. Only the engine's silence counts:
  a run whose agent is disconnected is not crashed while its engine still reports. The clock
  starts no earlier than this control plane did, so a restart (engines could not reach it
  meanwhile) never crashes runs that are fine.
- **Late runs.** A SCHEDULED run still waiting ``late_after`` past its time is marked Late;
  it stays dispatchable.
- **Stuck cancels.** A run CANCELLING for longer than ``cancelling_timeout`` is forced to
  CANCELLED; the agent holding it, if connected, is told again to tear its infrastructure
  down, and an agent that reconnects later reports it among its observed runs and is told then.

The reaper sleeps until the earliest moment one of these rules can fire (capped), so a quiet
system costs a few indexed queries per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import Run
from control_plane.orchestration import clock
from control_plane.orchestration.agents import AgentRegistry, CancelMessage
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.states import LATE, State, StateType
from control_plane.store import runs as repo
from control_plane.store.db import Database

log = logging.getLogger(__name__)

BATCH = 200
MAX_SLEEP_SECONDS = 30.0


@dataclass(frozen=True)
class LivenessPolicy:
    """How long silence, lateness and cancelling may last."""

    engine_grace: timedelta = timedelta(seconds=60)
    late_after: timedelta = timedelta(seconds=15)
    cancelling_timeout: timedelta = timedelta(seconds=300)


class Reaper:
    """Applies the liveness rules until cancelled."""

    def __init__(
        self,
        db: Database,
        agents: AgentRegistry,
        notifier: Notifier,
        policy: LivenessPolicy,
        started_at: datetime | None = None,
    ) -> None:
        self._db = db
        self._agents = agents
        self._notifier = notifier
        self._policy = policy
        self._started_at = started_at or clock.now()

    async def run(self) -> None:
        """Sweep, sleep until something can be due, repeat."""
        while True:
            try:
                await self._db.shielded(self.sweep_once())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("liveness sweep failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.sleep(self._sleep_seconds())

    def _sleep_seconds(self) -> float:
        shortest = min(
            self._policy.engine_grace, self._policy.late_after, self._policy.cancelling_timeout
        )
        return min(MAX_SLEEP_SECONDS, max(0.2, shortest.total_seconds() / 4))

    async def sweep_once(self) -> list[Run]:
        """Apply every rule once; returns the runs it changed."""
        now = clock.now()
        changed: list[Run] = []
        if now - self._started_at >= self._policy.engine_grace:
            changed += await self._apply(
                lambda conn: repo.silent_engines(conn, now - self._policy.engine_grace, BATCH),
                lambda run: _crash_silent(run, now),
            )
        changed += await self._apply(
            lambda conn: repo.overdue_scheduled(conn, now - self._policy.late_after, BATCH),
            lambda run: State(StateType.SCHEDULED, LATE, _late_message(run, now)),
        )
        forced = await self._apply(
            lambda conn: repo.stuck_cancelling(conn, now - self._policy.cancelling_timeout, BATCH),
            lambda run: State(
                StateType.CANCELLED,
                message=f"{run.state_message} (forced: still cancelling after "
                f"{int(self._policy.cancelling_timeout.total_seconds())} s)",
            ),
        )
        for run in forced:
            session = self._agents.get(run.agent_session_id)
            if session is not None:
                session.send(CancelMessage(run.id, run.attempt, "cancel timed out"))
        return changed + forced

    async def _apply(
        self,
        find: Callable[[AsyncConnection], Awaitable[list[Run]]],
        target: Callable[[Run], State],
    ) -> list[Run]:
        async with self._db.read() as conn:
            if not await find(conn):
                return []
        changed: list[Run] = []
        async with self._db.write() as conn:
            for run in await find(conn):
                state = target(run)
                updated = await repo.compare_and_set(
                    conn, run, state, now=clock.now(), lease_deadline=None
                )
                if updated is not None:
                    changed.append(updated)
        for run in changed:
            log.info("run %s: %s (%s)", run.id, run.state_name, run.state_message)
            self._notifier.changed(run)
        return changed


def _crash_silent(run: Run, now: datetime) -> State:
    last = run.last_heartbeat_at or run.started_at
    ago = int((now - last).total_seconds()) if last else 0
    when = last.isoformat(timespec="seconds") if last else "never"
    return State(
        StateType.CRASHED,
        message=f"The engine stopped reporting: last heartbeat {when} ({ago} s ago); "
        "its process or node was lost",
    )


def _late_message(run: Run, now: datetime) -> str:
    late = int((now - run.scheduled_at).total_seconds())
    return f"Due {late} s ago and not yet dispatched (no agent of pool {run.pool_name!r} with free capacity)"
