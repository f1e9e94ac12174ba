"""The dispatcher: claims due runs for connected agents and pushes the assignments.

There is no polling loop between "run created" and "agent told": creating a run, an agent
connecting or granting credit, and a run finishing all wake the dispatcher at once. Between
wake-ups it sleeps exactly until the next thing it must act on by time: the next scheduled
run coming due, or the next assignment lease running out.

A claim is one compare-and-set per run inside one transaction per pool: the run moves to
PENDING/Assigned with the agent session, a lease deadline and the hash of a freshly minted
engine token. Only after the commit is the assignment pushed, so an agent is never told about
a claim that did not happen. An assignment that is neither accepted nor submitted before its
lease runs out is handed back: the run goes back to SCHEDULED as its next attempt
(``attempts.hand_back``), so the old assignment's engine token stops working and the agent
sees the next claim as a new attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane import metrics
from control_plane.models import Collision, Deployment, Run, WorkQueue
from control_plane.orchestration import clock, sources, tokens
from control_plane.orchestration.agents import AgentRegistry, AgentSession, AssignMessage
from control_plane.orchestration.attempts import hand_back
from control_plane.orchestration.changes import Notifier
from control_plane.orchestration.concurrency import SHOWN_IDS, DeploymentLimit, Slots
from control_plane.orchestration.loops import WakeLoop
from control_plane.states import (
    ASSIGNED,
    AWAITING_CONCURRENCY_SLOT,
    Actor,
    State,
    StateType,
)
from control_plane.store import catalog as catalog_repo
from control_plane.store import cluster as cluster_repo
from control_plane.store import queues as queues_repo
from control_plane.store import runs as repo
from control_plane.store.db import Database
from flowyard_common.aiotasks import cancel_and_wait
from flowyard_common.templates import compact_json, resolve_variables

log = logging.getLogger(__name__)

#: Upper bound on one sleep, so that a clock jump cannot stall dispatch for long.
MAX_SLEEP_SECONDS = 60.0
LEASE_BATCH = 200
#: Runs of a deployment at its limit marked waiting (or cancelled) per pass.
HOLD_BATCH = 500


class Dispatcher:
    """Pushes due runs to agents with credit; hands back expired assignments."""

    def __init__(
        self,
        db: Database,
        agents: AgentRegistry,
        notifier: Notifier,
        lease: timedelta,
        *,
        alone: Callable[[], Coroutine[Any, Any, bool]] | None = None,
    ) -> None:
        self._db = db
        self._agents = agents
        self._notifier = notifier
        self._lease = lease
        #: Whether no other replica served while this one started (see ``regrant_leases``);
        #: None: always alone.
        self._alone = alone
        self._alone_task: asyncio.Task[bool] | None = None
        self._regranted = False
        #: When a lease can next run out: the earliest deadline the store held when last
        #: asked, lowered by every lease this dispatcher grants. Leases granted later never end
        #: earlier (they all last ``lease``), so no pass before this time needs to look.
        self._lease_check_at: datetime | None = None
        self._leases_read = False
        self._loop = WakeLoop(
            lambda: self._db.shielded(self.dispatch_once(), counted=False),
            what="dispatch",
            max_sleep_seconds=MAX_SLEEP_SECONDS,
        )

    def wake(self) -> None:
        """Dispatch again now (a run was created, credit granted, a slot freed)."""
        self._loop.wake()

    async def run(self) -> None:
        """Dispatch until cancelled (the first pass gives running assignments a whole lease)."""
        try:
            await self._loop.run()
        finally:
            if self._alone_task is not None:
                await cancel_and_wait([self._alone_task])

    async def regrant_leases(self) -> None:
        """Extend every running assignment lease to a whole lease from now.

        Called once when the control plane starts: while it was down, agents could not
        confirm what they were assigned, and leases are not for outages. Without this, every
        lease that ran out meanwhile would hand its run back a moment after the restart,
        under the agent that started it; with it, the agent reconnects and its Hello says
        what it runs (``AgentReports.adopt``). A replica that starts while others serve
        does not: there was no outage, and their agents confirm on time.
        """
        async with self._db.write() as conn:
            count = await repo.regrant_leases(conn, clock.now() + self._lease)
        if count:
            log.info("re-granted %d assignment lease(s) for agents to reconnect", count)

    async def _may_regrant(self) -> bool:
        """Whether the re-grant can be decided now; decided, it is done or skipped. Until
        then no lease is expired (the passes meanwhile still dispatch)."""
        if self._alone is None:
            return True
        if self._alone_task is None:
            self._alone_task = asyncio.create_task(self._alone(), name="replicas at start")
            self._alone_task.add_done_callback(lambda _: self.wake())
        if not self._alone_task.done():
            return False
        if not self._alone_task.result():
            log.info("other replicas are serving: running assignment leases stand as they are")
            self._regranted = True
            return False
        return True

    async def dispatch_once(self) -> datetime | None:
        """One pass: expire leases, claim and push due runs. Returns when to look again."""
        if not self._regranted and await self._may_regrant():
            # In a pass, so that a busy database only delays it, like any pass.
            await self.regrant_leases()
            self._regranted = True
        now = clock.now()
        if self._regranted and (
            not self._leases_read
            or (self._lease_check_at is not None and self._lease_check_at <= now)
        ):
            await self._expire_leases(now)
            async with self._db.read() as conn:
                self._lease_check_at = await repo.next_lease_deadline(conn)
            self._leases_read = True
        waiting = self._agents.with_credit()
        # Most wake-ups (a run ended, credit came back) find nothing due: one indexed read
        # per pool says so, and when the next run comes due, without the write transaction.
        async with self._db.read() as conn:
            earliest = {
                pool_id: await repo.earliest_scheduled(conn, pool_id) for pool_id in waiting
            }
        due = {p: s for p, s in waiting.items() if (at := earliest[p]) is not None and at <= now}
        for pool_id, sessions in due.items():
            await self._dispatch_pool(pool_id, sessions, now)
        if due:
            async with self._db.read() as conn:
                scheduled = await repo.next_scheduled_time(
                    conn, self._agents.with_credit().keys(), now
                )
        else:
            scheduled = min((at for at in earliest.values() if at is not None), default=None)
        candidates = [t for t in (scheduled, self._lease_check_at) if t is not None]
        return min(candidates) if candidates else None

    async def _dispatch_pool(
        self, pool_id: str, sessions: list[AgentSession], now: datetime
    ) -> None:
        credits = {session.id: session.credits for session in sessions}
        claimed: list[tuple[AgentSession, Run, str]] = []
        changed: list[Run] = []
        async with self._db.write() as conn:
            # Read the time under the write lock: a run that ended while this pass waited
            # for it ended before the claims that take its slot.
            await cluster_repo.lock_pool(conn, self._db.dialect, pool_id)
            now = max(now, clock.now())
            pool = await catalog_repo.get_pool(conn, id=pool_id)
            if pool is None or pool.paused:
                return
            queues = await queues_repo.list_queues(conn, pool_id)
            limits = [
                DeploymentLimit(*row)
                for row in await queues_repo.limited_deployments(conn, pool_id)
            ]
            # The active runs are counted only when something has a limit to count against:
            # without one, a pass costs what it claims, however many runs are active.
            limited = pool.concurrency_limit or limits or any(q.concurrency_limit for q in queues)
            active = await repo.active_counts(conn, pool_id) if limited else []
            slots = Slots(pool, queues, limits, active)
            # Queues some connected agent takes runs from; a paused queue dispatches nothing.
            served = {
                q.id: q.name
                for q in queues
                if not q.paused and any(not s.queues or q.name in s.queues for s in sessions)
            }
            blocked = {d.id for d in slots.full_deployments()}
            # Each claimed run's deployment, read once per pass: its job variables and the
            # Secrets its source needs go into the assignment.
            deployments: dict[str, Deployment | None] = {}
            while True:
                room = slots.pool_room(sum(credits.values()))
                open_queues = [q for q in served if not slots.queue_full(q)]
                if room <= 0 or not open_queues:
                    break
                page = await repo.due_runs(
                    conn,
                    pool_id,
                    now,
                    room,
                    queues_by_priority=_by_priority(queues, open_queues),
                    blocked_deployments=blocked,
                )
                progressed = False
                page_claims: list[tuple[AgentSession, repo.Change, str]] = []
                for run in page:
                    if slots.pool_room(1) <= 0:
                        break
                    if slots.queue_full(run.queue_id) or run.queue_id not in served:
                        continue
                    if slots.deployment_full(run.deployment_id):
                        # Filled by this page: the next page leaves its runs out.
                        blocked.add(run.deployment_id)
                        progressed = True
                        continue
                    session = _session_for(sessions, credits, run.queue_name)
                    if session is None:
                        # Every agent that takes this queue is out of credit.
                        served.pop(run.queue_id or "", None)
                        progressed = True
                        continue
                    token, token_hash = tokens.mint_engine(run.id, run.attempt)
                    state = State(
                        StateType.PENDING, ASSIGNED, f"Assigned to agent {session.agent_name}"
                    )
                    claim = repo.Change(
                        run,
                        state,
                        actor=Actor.SERVER,
                        columns={
                            "agent_session_id": session.id,
                            "agent_name": session.agent_name,
                            "lease_deadline": now + self._lease,
                            "engine_token_hash": token_hash,
                            "assigned_at": now,
                            "accepted_at": None,
                            "infrastructure_id": "",
                        },
                    )
                    page_claims.append((session, claim, token))
                    credits[session.id] -= 1
                    slots.take(run)
                    progressed = True
                # One UPDATE and one history insert for the page's claims: the page's rows
                # are this transaction's (see ``due_runs``), so no claim can lose a race.
                updated = await repo.apply_locked(conn, [c for _, c, _ in page_claims], now)
                for (session, _, token), run in zip(page_claims, updated, strict=True):
                    if run.deployment_id not in deployments:
                        deployments[run.deployment_id] = await catalog_repo.get_deployment(
                            conn, id=run.deployment_id
                        )
                    claimed.append((session, run, token))
                if page_claims:
                    self._lease_granted(now + self._lease)
                # A page shorter than asked for held every run that was due (and not locked
                # by another replica's pass): a next page would find none this one did not.
                if len(page) < room or not progressed:
                    break
            for limit in slots.full_deployments():
                holders = await repo.active_of_deployment(conn, limit.id, SHOWN_IDS)
                reason = slots.reason(limit, holders)
                changed += await self._hold_back(conn, limit, reason, now)
        template_json = compact_json(pool.base_job_template) if claimed else ""
        for session, run, token in claimed:
            deployment = deployments[run.deployment_id]
            session.credits -= 1
            session.hold(run)
            metrics.DUE_TO_ASSIGNED.observe(max(0.0, (now - run.scheduled_at).total_seconds()))
            session.send(
                AssignMessage(
                    run_id=run.id,
                    attempt=run.attempt,
                    lease_deadline=run.lease_deadline or now,
                    deployment_name=run.deployment_name,
                    flow_name=run.flow_name,
                    base_job_template_json=template_json,
                    job_variables=resolve_variables(
                        pool.base_job_template,
                        deployment.job_variables if deployment else {},
                        run.job_variables,
                    ),
                    engine_token=token,
                    secret_env=tuple(sources.secret_env(deployment.source)) if deployment else (),
                )
            )
            self._notifier.changed(run)
        for run in changed:
            self._notifier.changed(run)

    def _lease_granted(self, deadline: datetime) -> None:
        if self._lease_check_at is None or deadline < self._lease_check_at:
            self._lease_check_at = deadline

    async def _hold_back(
        self, conn: AsyncConnection, limit: DeploymentLimit, reason: str, now: datetime
    ) -> list[Run]:
        """Due runs of a deployment at its limit wait (ENQUEUE) or are cancelled (CANCEL_NEW).

        A waiting run is written once, when it starts waiting; later passes leave it alone
        until a slot frees and it is dispatched in its turn.
        """
        if limit.collision is Collision.CANCEL_NEW:
            state = State(
                StateType.CANCELLED,
                message=f"Cancelled: {reason}; the deployment's collision strategy is CANCEL_NEW",
            )
            due = await repo.due_runs_of_deployment(conn, limit.id, now, HOLD_BATCH)
        else:
            state = State(StateType.SCHEDULED, AWAITING_CONCURRENCY_SLOT, reason)
            due = await repo.due_runs_of_deployment(
                conn, limit.id, now, HOLD_BATCH, except_name=AWAITING_CONCURRENCY_SLOT
            )
        return await repo.mark_waiting(conn, due, state, now)

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
                        actor=Actor.SERVER,
                        now=now,
                        lease_deadline=None,
                    )
                else:
                    why = f"agent {run.agent_name} did not confirm it within its lease"
                    updated = await hand_back(conn, run, why)
                if updated is not None:
                    changed.append(updated)
        metrics.LEASE_EXPIRIES.inc(len(changed))
        for run in changed:
            log.info("run %s: lease expired, now %s", run.id, run.state_type.value)
            self._notifier.changed(run)


def _by_priority(queues: list[WorkQueue], ids: list[str]) -> list[list[str]]:
    """The queues ``ids`` grouped by priority, highest first (the lowest number)."""
    wanted = set(ids)
    groups: dict[int, list[str]] = {}
    for queue in queues:
        if queue.id in wanted:
            groups.setdefault(queue.priority, []).append(queue.id)
    return [groups[priority] for priority in sorted(groups)]


def _session_for(
    sessions: list[AgentSession], credits: dict[str, int], queue: str
) -> AgentSession | None:
    """The session with the most credit left among those that take runs of ``queue``."""
    takers = [s for s in sessions if credits[s.id] > 0 and (not s.queues or queue in s.queues)]
    return max(takers, key=lambda s: credits[s.id]) if takers else None
