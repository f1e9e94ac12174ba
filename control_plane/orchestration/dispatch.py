"""The dispatcher: claims due runs for connected agents and pushes the assignments.

There is no polling loop between "run created" and "agent told": creating a run, an agent
connecting or granting credit, and a run finishing all wake the dispatcher at once. Between
wake-ups it sleeps exactly until the next thing it must act on by time: the next scheduled
run coming due, or the next assignment lease running out.

A claim is one compare-and-set per run inside one transaction per pool: the run moves to
PENDING/Assigned with the agent session, a lease deadline and the hash of a freshly minted
engine token. Only after the commit is the assignment pushed, so an agent is never told about
a claim that did not happen. An assignment that is neither accepted nor submitted before its
lease runs out goes back to SCHEDULED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from agent.templates import resolve_variables
from control_plane.models import Run
from control_plane.orchestration import clock, tokens
from control_plane.orchestration.agents import AgentRegistry, AgentSession, AssignMessage
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.reports import requeue
from control_plane.orchestration.states import ASSIGNED, State, StateType
from control_plane.store import catalog as catalog_repo
from control_plane.store import runs as repo
from control_plane.store.db import Database

log = logging.getLogger(__name__)

#: Upper bound on one sleep, so that a clock jump cannot stall dispatch for long.
MAX_SLEEP_SECONDS = 60.0
#: Pause after an unexpected error before trying again.
ERROR_PAUSE_SECONDS = 1.0
LEASE_BATCH = 200


class Dispatcher:
    """Pushes due runs to agents with credit; re-queues expired assignments."""

    def __init__(
        self, db: Database, agents: AgentRegistry, notifier: Notifier, lease: timedelta
    ) -> None:
        self._db = db
        self._agents = agents
        self._notifier = notifier
        self._lease = lease
        self._wake = asyncio.Event()
        self._wake.set()

    def wake(self) -> None:
        """Dispatch again now (a run was created, credit granted, a slot freed)."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until cancelled."""
        while True:
            self._wake.clear()
            try:
                next_time = await self._db.shielded(self.dispatch_once())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch failed; trying again")
                next_time = clock.now() + timedelta(seconds=ERROR_PAUSE_SECONDS)
            timeout = MAX_SLEEP_SECONDS
            if next_time is not None:
                timeout = min(timeout, max(0.0, (next_time - clock.now()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def dispatch_once(self) -> datetime | None:
        """One pass: expire leases, claim and push due runs. Returns when to look again."""
        now = clock.now()
        await self._expire_leases(now)
        waiting = self._agents.with_credit()
        for pool_id, sessions in waiting.items():
            await self._dispatch_pool(pool_id, sessions, now)
        async with self._db.read() as conn:
            candidates = [
                t
                for t in (
                    await repo.next_scheduled_time(conn, self._agents.with_credit().keys()),
                    await repo.next_lease_deadline(conn),
                )
                if t is not None
            ]
        return min(candidates) if candidates else None

    async def _dispatch_pool(
        self, pool_id: str, sessions: list[AgentSession], now: datetime
    ) -> None:
        credits = {session.id: session.credits for session in sessions}
        claimed: list[tuple[AgentSession, Run, str]] = []
        async with self._db.write() as conn:
            pool = await catalog_repo.get_pool(conn, id=pool_id)
            if pool is None or pool.paused:
                return
            capacity = sum(credits.values())
            if pool.concurrency_limit:
                capacity = min(
                    capacity, pool.concurrency_limit - await repo.count_active(conn, pool_id)
                )
            if capacity <= 0:
                return
            deployments: dict[str, dict[str, Any]] = {}
            for run in await repo.due_runs(conn, pool_id, now, capacity):
                session = max(sessions, key=lambda s: credits[s.id])
                if credits[session.id] <= 0:
                    break
                token, token_hash = tokens.mint_engine(run.id, run.attempt)
                updated = await repo.compare_and_set(
                    conn,
                    run,
                    State(StateType.PENDING, ASSIGNED, f"Assigned to agent {session.agent_name}"),
                    now=now,
                    agent_session_id=session.id,
                    agent_name=session.agent_name,
                    lease_deadline=now + self._lease,
                    engine_token_hash=token_hash,
                    accepted_at=None,
                    infrastructure_id="",
                )
                if updated is None:
                    continue  # changed under us (cancelled); the next pass sees it as it is
                if run.deployment_id not in deployments:
                    deployment = await catalog_repo.get_deployment(conn, id=run.deployment_id)
                    deployments[run.deployment_id] = deployment.job_variables if deployment else {}
                credits[session.id] -= 1
                claimed.append((session, updated, token))
        for session, run, token in claimed:
            session.credits -= 1
            session.send(
                AssignMessage(
                    run_id=run.id,
                    attempt=run.attempt,
                    lease_deadline=run.lease_deadline or now,
                    deployment_name=run.deployment_name,
                    flow_name=run.flow_name,
                    base_job_template=pool.base_job_template,
                    job_variables=resolve_variables(
                        pool.base_job_template, deployments[run.deployment_id], run.job_variables
                    ),
                    engine_token=token,
                )
            )
            self._notifier.changed(run)

    async def _expire_leases(self, now: datetime) -> None:
        # Most passes find nothing: look with a reader before queueing for the write lock.
        async with self._db.read() as conn:
            if not await repo.expired_leases(conn, now, 1):
                return
        changed: list[Run] = []
        async with self._db.write() as conn:
            for run in await repo.expired_leases(conn, now, LEASE_BATCH):
                if run.state_type is StateType.CANCELLING:
                    updated = await repo.compare_and_set(
                        conn,
                        run,
                        State(StateType.CANCELLED, message=run.state_message),
                        now=now,
                        lease_deadline=None,
                    )
                else:
                    why = f"agent {run.agent_name} did not start it within its lease"
                    updated = await requeue(conn, run, why)
                if updated is not None:
                    changed.append(updated)
        for run in changed:
            log.info("run %s: lease expired, now %s", run.id, run.state_type.value)
            self._notifier.changed(run)
