"""The reaper: time-based rules that keep runs from hanging.

- **Silent engines.** A RUNNING run whose engine has not heartbeated for ``engine_grace``
  becomes CRASHED with the time of its last sign of life. Only the engine's silence counts:
  a run whose agent is disconnected is not crashed while its engine still reports. The clock
  starts no earlier than this control plane did, so a restart (engines could not reach it
  meanwhile) never crashes runs that are fine; nor earlier than the database came back after
  a sweep found it unavailable, since the heartbeats of that time could not be stored.
- **Orphaned submissions.** A PENDING run whose infrastructure was submitted, but whose agent
  has been gone for ``agent_grace`` while its engine never reported (the node died during an
  image pull, the agent was uninstalled), becomes CRASHED: nobody is left who could say what
  happened to it. An agent that comes back later reports the run's Job among its observed
  runs and is told to delete it. Like the engine rule, the clock starts no earlier than this
  control plane did, or than the database came back.
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
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane import metrics
from control_plane.models import Pool, Run, WorkQueue
from control_plane.orchestration import clock
from control_plane.orchestration.agents import AgentRegistry, CancelMessage
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.cluster import LostLease, Singleton
from control_plane.orchestration.heartbeats import Heartbeats
from control_plane.orchestration.loops import transient
from control_plane.states import LATE, Actor, State, StateType
from control_plane.store import catalog as catalog_repo
from control_plane.store import cluster as cluster_repo
from control_plane.store import queues as queues_repo
from control_plane.store import runs as repo
from control_plane.store.db import Database, first_line

log = logging.getLogger(__name__)

#: Runs one transaction of a sweep changes, and transactions one rule takes per sweep.
BATCH = 50
MAX_BATCHES = 4
MAX_SLEEP_SECONDS = 30.0


@dataclass(frozen=True)
class LivenessPolicy:
    """How long silence, lateness and cancelling may last."""

    engine_grace: timedelta = timedelta(seconds=60)
    late_after: timedelta = timedelta(seconds=15)
    cancelling_timeout: timedelta = timedelta(seconds=300)
    agent_grace: timedelta = timedelta(seconds=300)


class Reaper:
    """Applies the liveness rules until cancelled."""

    def __init__(
        self,
        db: Database,
        agents: AgentRegistry,
        notifier: Notifier,
        policy: LivenessPolicy,
        started_at: datetime | None = None,
        lease: Singleton | None = None,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self._db = db
        self._agents = agents
        self._notifier = notifier
        self._policy = policy
        #: Silence counts from here on at the earliest: the start, or the end of a time when
        #: the database could not be used (and heartbeats not stored).
        self._watching_since = started_at or clock.now()
        self._database_was_away = False
        #: With several replicas, only the holder of this lease sweeps.
        self._lease = lease
        #: This replica's heartbeats not yet stored, flushed before engines are judged.
        self._heartbeats = heartbeats

    async def run(self) -> None:
        """Sweep, sleep until something can be due, repeat (until cancelled, or until a sweep
        fails for good: see ``loops.transient``)."""
        while True:
            if self._lease is not None:
                await self._lease.acquired()
            try:
                await self._db.shielded(self.sweep_once(), counted=False)
            except LostLease:
                log.info("another replica took over the liveness sweeps")
            except Exception as error:
                if not transient(error):
                    raise
                log.warning("liveness sweep failed (%s); trying again", first_line(error))
                self._database_was_away = True
            await asyncio.sleep(self._sleep_seconds())

    def _sleep_seconds(self) -> float:
        shortest = min(
            self._policy.engine_grace,
            self._policy.late_after,
            self._policy.cancelling_timeout,
            self._policy.agent_grace,
        )
        return min(MAX_SLEEP_SECONDS, max(0.2, shortest.total_seconds() / 4))

    async def sweep_once(self) -> list[Run]:
        """Apply every rule once; returns the runs it changed."""
        now = clock.now()
        if self._database_was_away:
            # Back (or this sweep fails too, and it stays away): engines that heartbeated
            # meanwhile were not heard, so none is judged silent for that time.
            self._watching_since = now
            self._database_was_away = False
        changed: list[Run] = []
        if now - self._watching_since >= self._policy.engine_grace:
            if self._heartbeats is not None:
                await self._heartbeats.flush()
            changed += await self._apply(
                "engine_silent",
                lambda conn, lock: repo.silent_engines(
                    conn, now - self._policy.engine_grace, BATCH, lock=lock
                ),
                lambda run: _crash_silent(run, now),
            )
        if now - self._watching_since >= self._policy.agent_grace:
            since = now - self._policy.agent_grace
            changed += await self._apply(
                "agent_gone",
                lambda conn, lock: repo.orphaned_pending(conn, since, BATCH, lock=lock),
                lambda run: _crash_orphaned(run, self._policy.agent_grace),
            )
        waiting = _Waiting()

        async def overdue(conn: AsyncConnection, lock: bool) -> list[Run]:
            runs = await repo.overdue_scheduled(
                conn, now - self._policy.late_after, BATCH, lock=lock
            )
            if runs:
                await waiting.load(conn)
            return runs

        changed += await self._apply(
            "late",
            overdue,
            lambda run: State(StateType.SCHEDULED, LATE, waiting.late_message(run, now)),
        )
        forced = await self._apply(
            "cancel_timeout",
            lambda conn, lock: repo.stuck_cancelling(
                conn, now - self._policy.cancelling_timeout, BATCH, lock=lock
            ),
            lambda run: State(
                StateType.CANCELLED,
                message=f"{run.state_message} (forced: still cancelling after "
                f"{int(self._policy.cancelling_timeout.total_seconds())} s)",
            ),
        )
        for run in forced:
            self._agents.tell_cancel(
                run.agent_session_id, CancelMessage(run.id, run.attempt, "cancel timed out")
            )
        return changed + forced

    async def _apply(
        self,
        rule: str,
        find: Callable[[AsyncConnection, bool], Awaitable[list[Run]]],
        target: Callable[[Run], State],
    ) -> list[Run]:
        """Change what ``find`` finds (``find(conn, lock)``; ``lock``: for this transaction),
        ``BATCH`` runs per transaction, with one UPDATE and one history insert for all of
        them: on SQLite a transaction holds the one write lock, so a backlog goes in short
        turns that let the calls waiting to write go between them, rather than in one long
        one. The runs changed are counted under ``rule`` (one of ``metrics.REAP_RULES``)."""
        reaped = metrics.REAPED.labels(rule)
        changed: list[Run] = []
        for _ in range(MAX_BATCHES):
            found, batch = await self._apply_batch(find, target)
            reaped.inc(len(batch))
            changed += batch
            if found < BATCH:
                break
        return changed

    async def _apply_batch(
        self,
        find: Callable[[AsyncConnection, bool], Awaitable[list[Run]]],
        target: Callable[[Run], State],
    ) -> tuple[int, list[Run]]:
        async with self._db.read() as conn:
            if not await find(conn, False):
                return 0, []
        async with self._db.write() as conn:
            if self._lease is not None:
                await self._lease.check(conn)
            runs = await find(conn, True)
            changes = [
                repo.Change(run, target(run), {"lease_deadline": None}, actor=Actor.SERVER)
                for run in runs
            ]
            changed = await repo.apply_locked(conn, changes, clock.now())
        for run in changed:
            log.info("run %s: %s (%s)", run.id, run.state_name, run.state_message)
            self._notifier.changed(run)
        return len(runs), changed


def _crash_silent(run: Run, now: datetime) -> State:
    last = run.last_heartbeat_at or run.started_at
    ago = int((now - last).total_seconds()) if last else 0
    when = last.isoformat(timespec="seconds") if last else "never"
    return State(
        StateType.CRASHED,
        message=f"The engine stopped reporting: last heartbeat {when} ({ago} s ago); "
        "its process or node was lost",
    )


def _crash_orphaned(run: Run, grace: timedelta) -> State:
    return State(
        StateType.CRASHED,
        message=f"Its agent {run.agent_name!r} has been gone for over "
        f"{grace.total_seconds():g} s and its engine "
        f"never reported since {run.state_time.isoformat(timespec='seconds')} "
        f"({run.state_name}): the infrastructure was lost with it",
    )


class _Waiting:
    """Why a due run is still waiting, from its pool, its queue and the connected agents."""

    def __init__(self) -> None:
        self._connected: dict[str, int] = {}
        self._pools: dict[str, Pool] = {}
        self._queues: dict[str, WorkQueue] = {}

    async def load(self, conn: AsyncConnection) -> None:
        self._pools = {pool.id: pool for pool in await catalog_repo.list_pools(conn)}
        self._queues = {queue.id: queue for queue in await queues_repo.list_queues(conn)}
        self._connected = await cluster_repo.live_sessions_by_pool(conn)

    def late_message(self, run: Run, now: datetime) -> str:
        late = int((now - run.scheduled_at).total_seconds())
        return f"Due {late} s ago and not yet dispatched: {self._reason(run)}"

    def _reason(self, run: Run) -> str:
        pool = self._pools.get(run.pool_id)
        queue = self._queues.get(run.queue_id or "")
        where = f"pool {run.pool_name!r}"
        if pool is not None and pool.paused:
            return f"{where} is paused (flowyard pool set {run.pool_name} --resume)"
        if queue is not None and queue.paused:
            return f"queue {queue.name!r} of {where} is paused"
        if not self._connected.get(run.pool_id):
            return f"no agent of {where} is connected"
        limits = []
        if pool is not None and pool.concurrency_limit:
            limits.append(f"the pool's ({pool.concurrency_limit})")
        if queue is not None and queue.concurrency_limit:
            limits.append(f"queue {queue.name!r}'s ({queue.concurrency_limit})")
        if limits:
            return (
                f"the agents of {where} have no free capacity, or a concurrency limit is "
                f"reached: {' or '.join(limits)}"
            )
        return f"the agents of {where} have no free capacity"
