"""What agents and engines report, applied to runs under the state rules.

Agent reports are fenced: a report counts only if the reporting session is connected and holds
the run, or the run's holder was an earlier session of the same agent (same pool and name) that
is no longer connected (the agent restarted, reconnected, or its pod was replaced); the new
session then takes the run over by a compare-and-set on the run. A session that was replaced
or is closing reports nothing, and since only one session per name is connected at a time
(``AgentRegistry.admit``), two live agents never both act on one run. Engine reports are
authenticated by the attempt's token before they get here.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane import metrics
from control_plane.errors import NotFound, Unauthenticated
from control_plane.models import LogRecord, LogStream, Run
from control_plane.orchestration import attempts, clock
from control_plane.orchestration.agents import AgentRegistry, AgentSession, CancelMessage
from control_plane.orchestration.attempts import ended as attempt_ended
from control_plane.orchestration.attempts import hand_back
from control_plane.orchestration.changes import Notifier, claimed, retrying
from control_plane.orchestration.heartbeats import Heartbeats
from control_plane.orchestration.recent_lines import RecentLines
from control_plane.states import (
    ASSIGNED,
    INFRASTRUCTURE_PENDING,
    SUBMITTED,
    Actor,
    State,
    StateType,
    crash_target,
    rejection,
)
from control_plane.store import logs as logs_repo
from control_plane.store import runs as repo
from control_plane.store.db import Database, GroupCommit

log = logging.getLogger(__name__)


class InfraKind(enum.Enum):
    """What an agent saw happen to a run's infrastructure."""

    PENDING = "pending"
    UNSCHEDULABLE = "unschedulable"
    IMAGE_PULL_ERROR = "image pull error"
    CRASH_LOOP = "crash loop"
    OOM_KILLED = "OOM killed"
    EVICTED = "evicted"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    DELETED = "deleted"


#: Kinds after which the infrastructure no longer runs the engine.
ENDING = frozenset(
    {
        InfraKind.OOM_KILLED,
        InfraKind.EVICTED,
        InfraKind.FAILED,
        InfraKind.SUCCEEDED,
        InfraKind.DELETED,
    }
)


@dataclass(frozen=True)
class InfraReport:
    """An ``InfraEvent`` from an agent."""

    run_id: str
    attempt: int
    kind: InfraKind
    reason: str = ""
    message: str = ""
    exit_code: int = 0
    log_tail: tuple[str, ...] = field(default_factory=tuple)
    #: The runtime gave up on the attempt (e.g. its pod never started) and tore it down.
    gave_up: bool = False


@dataclass(frozen=True)
class Proposal:
    """A state the engine proposes."""

    transition_id: str
    type: StateType
    name: str = ""
    message: str = ""
    result_summary: str = ""
    source_revision: str = ""
    """What the engine fetched (a commit sha, an archive's sha256); empty if not said."""


@dataclass(frozen=True)
class ProposalResult:
    """The answer to a proposal: whether it was taken, and the run's state after it."""

    accepted: bool
    run: Run
    reason: str = ""


class AgentReports:
    """Applies what agent sessions report."""

    def __init__(
        self, db: Database, notifier: Notifier, agents: AgentRegistry, lease: timedelta
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._agents = agents
        self._lease = lease

    async def adopt(self, session: AgentSession, observed: list[tuple[str, int, str]]) -> None:
        """Take over runs whose infrastructure a (re)connecting agent sees; tear down the rest.

        ``observed`` is (run id, attempt, infrastructure id). Hello is the reconciliation of
        what an agent did while its stream was down: an ``Accepted`` or ``Submitted`` written
        onto a dead stream is lost, but the infrastructure it names shows up here. An attempt
        still PENDING/Assigned is therefore submitted in fact, and stops being subject to its
        lease (which would hand it back under the agent's feet).
        """
        for run_id, attempt, infrastructure_id in observed:
            async with self._db.read() as conn:
                run = await repo.get_run(conn, run_id) if len(run_id) == 32 else None
            why = attempt_ended(run, attempt) if run is not None else "the run is unknown"
            if run is None or why:
                session.send(CancelMessage(run_id, attempt, why or "the run is unknown"))
                continue
            held = await self._hold(session, run)
            if held is None:
                continue
            # What the run is now, not what it was when read above: a cancel may have ended
            # it meanwhile (its agent gone, nothing seemed to need tearing down).
            why = attempt_ended(held, attempt)
            if why:
                session.send(CancelMessage(run_id, attempt, why))
            elif held.state_type is StateType.CANCELLING:
                session.send(CancelMessage(run_id, attempt, held.state_message))
            elif (
                held.state_type is StateType.PENDING
                and held.lease_deadline is not None
                and infrastructure_id
            ):
                await self.submitted(session, run_id, attempt, infrastructure_id)

    async def accepted(
        self, session: AgentSession, run_id: str, attempt: int, at: datetime
    ) -> None:
        """The agent took the assignment: extend the lease until it submits."""

        async def apply(conn: AsyncConnection) -> Run | None:
            known = self._known(conn, session, run_id, attempt)
            if known is not None and known.state_type is StateType.PENDING:
                updated = await repo.set_columns(
                    conn, known, accepted_at=at, lease_deadline=clock.now() + self._lease
                )
                if updated is not None:
                    return updated
            run = await self._held_run(conn, session, run_id, attempt, stale_cancel=True)
            if run is None or run.state_type is not StateType.PENDING:
                return None
            updated = await repo.set_columns(
                conn, run, accepted_at=at, lease_deadline=clock.now() + self._lease
            )
            return claimed(updated)

        accepted = await retrying(lambda: self._db.unit(run_id, apply))
        if accepted is not None:
            session.hold(accepted)

    async def submitted(
        self, session: AgentSession, run_id: str, attempt: int, infrastructure_id: str
    ) -> None:
        """The run's infrastructure exists: PENDING/Submitted, no lease any more."""

        async def apply(conn: AsyncConnection) -> Run | None:
            known = self._known(conn, session, run_id, attempt)
            if known is not None and not known.is_terminal:
                # Written on the run as last committed here, if that is still what is
                # stored (the version the write names proves it), as below on the stored run.
                if known.state_type is StateType.PENDING and known.state_name == ASSIGNED:
                    updated = await self._submit(conn, known, infrastructure_id)
                else:
                    updated = await repo.set_columns(
                        conn, known, infrastructure_id=infrastructure_id[:300], lease_deadline=None
                    )
                if updated is not None:
                    return updated
            run = await self._held_run(conn, session, run_id, attempt, stale_cancel=True)
            if run is None:
                return None
            if run.is_terminal:
                # It ended before this report arrived (a warm engine can finish a short
                # flow first): it still says where it ran, and nothing else changes.
                if run.infrastructure_id:
                    return None
                return claimed(
                    await repo.set_columns(conn, run, infrastructure_id=infrastructure_id[:300])
                )
            if run.state_type is StateType.PENDING and run.state_name == ASSIGNED:
                updated = await self._submit(conn, run, infrastructure_id)
            else:
                # The engine may already have reported RUNNING: keep its state.
                updated = await repo.set_columns(
                    conn, run, infrastructure_id=infrastructure_id[:300], lease_deadline=None
                )
            return claimed(updated)

        try:
            await self._notifier.apply(lambda: self._db.unit(run_id, apply))
        finally:
            # Nothing more is reported that a remembered run would spare a read for.
            session.held.pop(run_id, None)

    async def _submit(self, conn: AsyncConnection, run: Run, infrastructure_id: str) -> Run | None:
        """PENDING/Assigned becomes PENDING/Submitted, if ``run`` is still what is stored."""
        return await repo.compare_and_set(
            conn,
            run,
            State(StateType.PENDING, SUBMITTED, f"Submitted as {infrastructure_id}"),
            actor=Actor.AGENT,
            now=clock.now(),
            infrastructure_id=infrastructure_id[:300],
            lease_deadline=None,
        )

    def _known(
        self, conn: AsyncConnection, session: AgentSession, run_id: str, attempt: int
    ) -> Run | None:
        """The run as this session last saw it committed (or as the transaction of
        ``conn`` wrote it since), if it may report on it as it is: connected, and the holder
        of this attempt. The version of what the report writes proves the rest (see
        ``AgentSession.held``)."""
        known = session.held.get(run_id)
        if known is not None:
            known = repo.as_written(conn, known)
        if (
            known is None
            or known.attempt != attempt
            or known.agent_session_id != session.id
            or not self._agents.connected(session)
        ):
            return None
        return known

    async def submit_failed(
        self, session: AgentSession, run_id: str, attempt: int, reason: str
    ) -> None:
        """The agent could not create the infrastructure: the run crashes with the reason."""
        await self._end(
            session, run_id, attempt, f"The agent could not start the run: {reason}", ()
        )

    async def infra_event(self, session: AgentSession, report: InfraReport) -> None:
        """Record what happened to the infrastructure; an ending event crashes an unfinished run."""
        if report.kind in ENDING or report.gave_up:
            detail = _describe_end(report)
            await self._end(session, report.run_id, report.attempt, detail, report.log_tail)
            return
        text = f"Infrastructure {report.kind.value}: {report.reason} {report.message}".strip()

        async def apply() -> Run | None:
            async with self._db.write() as conn:
                run = await self._held_run(
                    conn, session, report.run_id, report.attempt, stale_cancel=True
                )
                if run is None or run.is_terminal:
                    return None
                # Once the engine has opened its stream it numbers the attempt's lines itself;
                # a line of ours in between would take a seq it is about to use.
                if run.last_heartbeat_at is None:
                    await self._system_lines(conn, run, [text], level=30)
                # Whatever holds the pod back (scheduling, an image pull, its config), the run
                # waits on its infrastructure; a watch may never show the plain Pending between.
                waiting = State(StateType.PENDING, INFRASTRUCTURE_PENDING, text)
                if run.state_type is StateType.PENDING and (
                    run.state_name,
                    run.state_message,
                ) != (waiting.name, waiting.message):
                    updated = await repo.compare_and_set(
                        conn,
                        run,
                        waiting,
                        actor=Actor.AGENT,
                        now=clock.now(),
                    )
                    return claimed(updated)
                return run

        await self._notifier.apply(apply)

    async def cancelled(self, session: AgentSession, run_id: str, attempt: int) -> None:
        """A cancelled run's infrastructure is gone: CANCELLING becomes CANCELLED."""

        async def apply() -> Run | None:
            async with self._db.write() as conn:
                run = await self._held_run(conn, session, run_id, attempt)
                if run is None or run.state_type is not StateType.CANCELLING:
                    return None
                updated = await repo.compare_and_set(
                    conn,
                    run,
                    State(StateType.CANCELLED, message=run.state_message),
                    actor=Actor.AGENT,
                    now=clock.now(),
                    lease_deadline=None,
                )
                return claimed(updated)

        await self._notifier.apply(apply)

    async def session_closed(
        self, session: AgentSession, *, keep_assignments: bool = False
    ) -> None:
        """Hand back assignments the departed agent never accepted; the rest wait for the lease.

        Only when the agent hung up or its connection broke (``keep_assignments`` false). An
        agent whose session the server ended (it went silent: a partition, a stall, a frozen
        process; or the server is stopping) may have received the assignment and started it,
        and will say so in the Hello of its next session; its lease is its time to come back.
        Runs it submitted keep running: their engines report on their own, and the agent
        takes them over again when it reconnects.
        """
        if keep_assignments:
            return
        async with self._db.read() as conn:
            held = await repo.runs_of_session(conn, session.id)
        for run in held:
            if run.accepted_at is None and run.state_name == ASSIGNED:
                await self._hand_back(
                    run.id, run.attempt, f"agent {run.agent_name} disconnected before accepting"
                )

    async def _hand_back(self, run_id: str, attempt: int, why: str) -> None:
        async def apply() -> Run | None:
            async with self._db.write() as conn:
                run = await repo.get_run(conn, run_id)
                if run is None or run.attempt != attempt or run.state_name != ASSIGNED:
                    return None
                updated = await hand_back(conn, run, why)
                return claimed(updated)

        await self._notifier.apply(apply)

    async def _end(
        self, session: AgentSession, run_id: str, attempt: int, detail: str, tail: tuple[str, ...]
    ) -> None:
        session.held.pop(run_id, None)  # its infrastructure is gone: nothing more to confirm

        async def apply() -> Run | None:
            async with self._db.write() as conn:
                run = await self._held_run(conn, session, run_id, attempt)
                if run is None or run.is_terminal:
                    return None
                target = crash_target(run.state_type)
                if rejection(run.state_type, target, Actor.AGENT):
                    return None
                if tail:
                    await self._system_lines(
                        conn, run, ["Last lines of the infrastructure's output:", *tail], level=40
                    )
                message = run.state_message if target is StateType.CANCELLED else detail
                updated = await repo.compare_and_set(
                    conn,
                    run,
                    State(target, message=message),
                    actor=Actor.AGENT,
                    now=clock.now(),
                    lease_deadline=None,
                )
                return claimed(updated)

        await self._notifier.apply(apply)

    async def _held_run(
        self,
        conn: AsyncConnection,
        session: AgentSession,
        run_id: str,
        attempt: int,
        *,
        stale_cancel: bool = False,
    ) -> Run | None:
        if not self._agents.connected(session):
            log.info(
                "ignoring a report about run %s from agent %s: its session %s was replaced "
                "or is ending",
                run_id,
                session.agent_name,
                session.id,
            )
            return None
        run = await repo.get_run(conn, run_id)
        if run is None:
            return None
        if run.attempt != attempt:
            if stale_cancel and attempt < run.attempt:
                # The agent runs an attempt that was handed back: its engine is refused, so
                # tear its infrastructure down rather than let it fail on its own.
                session.send(
                    CancelMessage(
                        run_id,
                        attempt,
                        f"attempt {attempt} was handed back; run {run_id} is "
                        f"on attempt {run.attempt}",
                    )
                )
            return None
        if run.agent_session_id == session.id:
            return run
        if await self._may_take_over(conn, session, run):
            updated = await repo.set_columns(conn, run, agent_session_id=session.id)
            return claimed(updated)
        log.info(
            "ignoring a report about run %s from agent %s, which does not hold it",
            run_id,
            session.agent_name,
        )
        return None

    async def _hold(self, session: AgentSession, run: Run) -> Run | None:
        async def apply() -> Run | None:
            async with self._db.write() as conn:
                # An attempt handed back meanwhile is torn down like any stale one.
                return await self._held_run(conn, session, run.id, run.attempt, stale_cancel=True)

        return await retrying(apply)

    async def _may_take_over(self, conn: AsyncConnection, session: AgentSession, run: Run) -> bool:
        return (
            run.pool_id == session.pool_id
            and run.agent_name == session.agent_name
            and not await self._agents.holder_connected(conn, run.agent_session_id)
        )

    async def _system_lines(
        self, conn: AsyncConnection, run: Run, texts: list[str], level: int
    ) -> None:
        await append_system_lines(conn, self._db.dialect, run, texts, level)


async def append_system_lines(
    conn: AsyncConnection, dialect: str, run: Run, texts: list[str], level: int
) -> None:
    """Add lines written by Flowyard itself after the attempt's last line."""
    now = clock.now()
    await logs_repo.append_lines(
        conn,
        dialect,
        run.id,
        run.attempt,
        lambda first: [
            LogRecord(run.id, run.attempt, seq, now, level, LogStream.SYSTEM, "flowyard", text)
            for seq, text in enumerate(texts, start=first)
        ],
    )


#: Lines stored in one transaction from which SQLite works on them on a worker thread.
OFFLOADED_LINES = 1_000


def _many_lines(batches: Sequence[tuple[str, int, list[LogRecord]]]) -> bool:
    return sum(len(lines) for _, _, lines in batches) >= OFFLOADED_LINES


async def _observe_start(conn: AsyncConnection, run: Run, now: datetime) -> None:
    """Time the attempt took from its assignment to its engine running (once it commits): from
    the claim's time on the run (or, for a claim from before it was kept there, one indexed
    read of the attempt's history)."""
    assigned = run.assigned_at or await repo.assigned_at(conn, run.id, run.attempt)
    if assigned is not None:
        seconds = max(0.0, (now - assigned).total_seconds())
        metrics.counted(conn.info).observe(metrics.ASSIGNED_TO_RUNNING, seconds)


def _describe_end(report: InfraReport) -> str:
    if report.gave_up:
        what = f"{report.reason}: {report.message}" if report.message else report.reason
        return f"The run's infrastructure never started ({report.kind.value}): {what}"
    match report.kind:
        case InfraKind.SUCCEEDED:
            return "The engine exited (code 0) without reporting a final state"
        case InfraKind.FAILED:
            return (
                f"The engine exited with code {report.exit_code} before reporting a final state"
                + (f": {report.message}" if report.message else "")
            )
        case InfraKind.DELETED:
            return "The run's infrastructure was deleted" + (
                f": {report.message}" if report.message else ""
            )
        case _:
            return f"The run's infrastructure was {report.kind.value}: {report.reason} {report.message}".strip()


class EngineReports:
    """Applies what engines report; every call is authenticated by the attempt's token."""

    def __init__(
        self, db: Database, notifier: Notifier, heartbeats: Heartbeats, recent: RecentLines
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._heartbeats = heartbeats
        self._recent = recent
        self._log_batches = GroupCommit(
            db, self._store_batches, offload=_many_lines, committed=self._batches_committed
        )

    async def current(self, run_id: str) -> Run | None:
        """The run as stored now (for an already authenticated stream)."""
        async with self._db.read() as conn:
            return await repo.get_run(conn, run_id)

    async def watched(self, run_id: str) -> repo.AttemptWatch | None:
        """What the stream of the run's engine watches of it, as stored now."""
        async with self._db.read() as conn:
            return await repo.attempt_watch(conn, run_id)

    def heartbeat(self, run: Run) -> None:
        """The engine of ``run`` is alive now (a liveness mark, not a state change: stored
        with the next batch, see ``heartbeats``)."""
        self._heartbeats.mark(run.id, run.attempt)

    async def open(self, run: Run) -> tuple[int, repo.AttemptWatch | None]:
        """An engine stream opens: mark the engine alive; the highest stored seq, and what
        the stream watches of the run as it is now (None: the run is gone).

        One transaction, so no line of the control plane's own can slip in between the seq
        the engine continues from and the mark that stops such lines (see ``infra_event``).
        """

        async def apply(conn: AsyncConnection) -> tuple[int, repo.AttemptWatch | None]:
            watch, stored = await repo.open_attempt(conn, run.id, run.attempt, clock.now())
            if stored is None:
                stored = await logs_repo.max_seq(conn, run.id, run.attempt)
            return stored, watch

        return await self._db.unit(run.id, apply)

    async def store_logs(self, run: Run, lines: list[LogRecord]) -> None:
        """Store a batch (duplicates of stored lines are dropped) and wake log tailers.

        Batches of several engines that arrive together are stored in one transaction, with
        one insert (``GroupCommit``).

        Raises:
            Unauthenticated: the stream's attempt has ended (the rule of its token, checked
                in the same transaction as the insert, so no line lands after the end).
        """
        await self._log_batches.submit((run.id, run.attempt, lines))

    def _batches_committed(
        self,
        batches: Sequence[tuple[str, int, list[LogRecord]]],
        outcomes: Sequence[Exception | None],
    ) -> None:
        # At once, before any follower runs: one woken by something else, reading between
        # the commit and the memory of what it stored, would find the batch only in the
        # database, and read every later batch from there too, always a step ahead of memory.
        for (run_id, _, lines), outcome in zip(batches, outcomes, strict=True):
            if outcome is None:
                self._recent.stored(run_id, lines)
                metrics.LOG_LINES.inc(len(lines))
                self._notifier.lines_added(run_id)

    async def _store_batches(
        self, conn: AsyncConnection, batches: Sequence[tuple[str, int, list[LogRecord]]]
    ) -> list[Exception | None]:
        current = await repo.attempt_states(conn, {run_id for run_id, _, _ in batches})
        outcomes: list[Exception | None] = []
        taken: list[list[LogRecord]] = []
        for run_id, attempt, batch in batches:
            state = current.get(run_id)
            why = (
                attempts.ended_at(run_id, attempt, *state) if state else "the run no longer exists"
            )
            if why:
                outcomes.append(Unauthenticated(why))
            else:
                outcomes.append(None)
                taken.append(batch)
        await logs_repo.insert_lines(conn, taken, self._db.dialect, locked=True)
        return outcomes

    async def propose(
        self, run_id: str, attempt: int, proposal: Proposal, known: Run | None = None
    ) -> ProposalResult:
        """Apply a state proposal of the engine of ``attempt``.

        ``known`` is the run as the engine's stream last saw it committed. While it is still
        what is stored, the proposal is applied to it without reading the run first: the
        compare-and-set on its version proves it current. When that fails, or the answer
        would write nothing (a repeat, a refusal), the run is read and the proposal decided
        on what is stored, as without ``known``.
        """

        async def apply(conn: AsyncConnection) -> ProposalResult:
            latest = repo.as_written(conn, known) if known is not None else None
            if latest is not None and self._plain_transition(latest, attempt, proposal):
                updated = await self._transition(conn, latest, proposal)
                if updated is not None:
                    return ProposalResult(True, updated)
            run = await repo.get_run(conn, run_id)
            if run is None:
                raise NotFound(f"run {run_id} not found")
            if (
                proposal.transition_id
                and run.last_transition_id == proposal.transition_id
                and run.attempt in (attempt, attempt + 1)
            ):
                # A repeat: of this answer, or of the FAILED that scheduled the retry.
                return ProposalResult(True, run)
            if run.attempt != attempt:
                return ProposalResult(False, run, f"attempt {attempt} is no longer current")
            refused = rejection(run.state_type, proposal.type, Actor.ENGINE)
            if refused:
                return ProposalResult(False, run, refused)
            if (
                proposal.type is StateType.FAILED
                and run.state_type is not StateType.CANCELLING
                and (failures := await repo.count_failed(conn, run.id)) < run.max_retries
            ):
                retried = await attempts.retry(
                    conn,
                    run,
                    State(StateType.FAILED, proposal.name, proposal.message),
                    proposal.transition_id,
                    failures + 1,
                )
                return ProposalResult(True, claimed(retried))
            return ProposalResult(True, claimed(await self._transition(conn, run, proposal)))

        result = await retrying(lambda: self._db.unit(run_id, apply))
        if result.accepted:
            self._notifier.changed(result.run)
        return result

    @staticmethod
    def _plain_transition(run: Run, attempt: int, proposal: Proposal) -> bool:
        """Whether, on ``run`` as it is, the proposal is a transition of the attempt's state
        and nothing else: not a repeat, allowed, and not a failure (which may retry)."""
        return (
            proposal.type is not StateType.FAILED
            and run.attempt == attempt
            and not (proposal.transition_id and run.last_transition_id == proposal.transition_id)
            and rejection(run.state_type, proposal.type, Actor.ENGINE) is None
        )

    async def _transition(self, conn: AsyncConnection, run: Run, proposal: Proposal) -> Run | None:
        """Move ``run`` to the proposed state if it is still what is stored; None if not."""
        columns: dict[str, object] = {"lease_deadline": None}
        if proposal.type is StateType.COMPLETED:
            columns["result_summary"] = proposal.result_summary[:2000]
        if proposal.source_revision:
            columns["source_revision"] = proposal.source_revision
        message = proposal.message
        if proposal.type is StateType.CANCELLED:
            message = run.state_message  # the user's reason, not how the engine heard it
        now = clock.now()
        updated = await repo.compare_and_set(
            conn,
            run,
            State(proposal.type, proposal.name, message),
            actor=Actor.ENGINE,
            now=now,
            transition_id=proposal.transition_id or None,
            **columns,
        )
        if (
            updated is not None
            and proposal.type is StateType.RUNNING
            and run.state_type is StateType.PENDING
        ):
            await _observe_start(conn, run, now)
        return updated
