"""Connected agent sessions: who is connected to which pool, with how much credit.

A session lives exactly as long as its ``Connect`` stream. The dispatcher pushes assignments
into a session's outbox only while the session has credit; the stream handler drains the
outbox onto the wire.

An agent's name is its identity in its pool: a new session takes over the runs held by
departed sessions of the same name (``reports.AgentReports``). So that two live processes
never act on one run, at most one session per pool and name is connected: a second instance
is refused until the first one's session ends, while the same instance reconnecting replaces
its stale session at once (:meth:`AgentRegistry.admit`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.errors import AlreadyExists
from control_plane.models import Run
from control_plane.orchestration import clock
from control_plane.orchestration.bus import CANCEL, CLOSE_SESSION, TOKEN_REVOKED, Bus
from control_plane.store import cluster as cluster_repo
from control_plane.store.db import Database


@dataclass(frozen=True)
class AssignMessage:
    """Run one attempt (pushed to the agent as ``Assign``)."""

    run_id: str
    attempt: int
    lease_deadline: datetime
    deployment_name: str
    flow_name: str
    #: The pool's base job template as JSON text, serialized once for a dispatch pass's
    #: assignments (a Kubernetes pool's is about 6 KB: 36 µs to serialize).
    base_job_template_json: str
    job_variables: dict[str, Any]
    engine_token: str
    secret_env: tuple[tuple[str, str, str], ...] = ()
    """(variable, Secret name, key): environment the engine needs from Kubernetes Secrets."""


@dataclass(frozen=True)
class CancelMessage:
    """Tear down a run's infrastructure (pushed to the agent as ``Cancel``)."""

    run_id: str
    attempt: int
    reason: str


Outgoing = AssignMessage | CancelMessage

#: Runs a session remembers (``AgentSession.held``): more than any agent holds unsubmitted.
MAX_HELD = 1_000


@dataclass(eq=False)
class AgentSession:
    """One connected agent stream."""

    agent_name: str
    pool_id: str
    pool_name: str
    runtime: str
    credits: int
    #: How many runs the agent runs at once in all (``Hello.slots``; 0: it did not say).
    slots: int = 0
    #: Names of the pool queues the agent takes runs from; empty means every queue.
    queues: frozenset[str] = frozenset()
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    outbox: asyncio.Queue[Outgoing | None] = field(default_factory=asyncio.Queue)
    #: The id of the admin or agent token the session connected with.
    token_id: str = ""
    #: Set when that token is revoked: the stream ends with UNAUTHENTICATED.
    revoked: bool = False
    #: The agent process's id (``Hello.instance_id``); empty for agents that send none.
    instance_id: str = ""
    connected_at: datetime = field(default_factory=clock.now)
    #: When the agent last sent anything (a heartbeat at least every interval Welcome set).
    last_seen: datetime = field(default_factory=clock.now)
    #: Set once the stream is ending: the session no longer counts as connected by its name.
    closing: bool = False
    #: Set when the server, not the agent, ends the session (the agent went silent, the
    #: server stops): the agent may be running what it was assigned, so its unaccepted
    #: assignments wait for their lease instead of being handed back at once.
    keep_assignments: bool = False
    #: Runs assigned to this session and not yet submitted, as last committed here: a report
    #: about one is applied without reading it first while its version proves it current.
    held: dict[str, Run] = field(default_factory=dict)

    def hold(self, run: Run) -> None:
        """Remember ``run`` as committed (a claim of this session, or a change it reported)."""
        if len(self.held) >= MAX_HELD and run.id not in self.held:
            # Assignments whose reports never came (handed back, taken over): the oldest go.
            del self.held[next(iter(self.held))]
        self.held[run.id] = run

    def send(self, message: Outgoing) -> None:
        """Queue a message for the agent."""
        self.outbox.put_nowait(message)

    def close(self) -> None:
        """Ask the stream handler to end the stream."""
        self.closing = True
        self.outbox.put_nowait(None)

    def revoke(self) -> None:
        """The session's token was revoked: end the stream, refusing the agent."""
        self.revoked = True
        self.close()


class AgentRegistry:
    """The agent sessions of this replica, and what every replica knows of all of them.

    The streams themselves live in the replica that holds them (only it pushes to an agent),
    so ``get``, ``connected``, ``all`` and ``with_credit`` are about this replica's sessions.
    Which agent is connected, to which replica, is in the database (``store.cluster``): a
    second instance of an agent is refused wherever it connects, and whether a run's holder is
    still connected is answered for sessions on any replica. A cancel for an agent connected
    to another replica, or the close of its stale session, reaches it as a hint on the bus.
    """

    def __init__(self, db: Database, bus: Bus, replica_id: str) -> None:
        self._db = db
        self._bus = bus
        self._replica_id = replica_id
        self._sessions: dict[str, AgentSession] = {}
        # (credit, last seen) of each session as last recorded in its row
        self._recorded: dict[str, tuple[int, datetime]] = {}
        # (lock, how many Hellos hold or wait for it) per name being admitted
        self._admitting: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        bus.on(CANCEL, self._cancel_hint)
        bus.on(CLOSE_SESSION, self._close_hint)
        bus.on(TOKEN_REVOKED, self._revoked_hint)

    async def admit(self, session: AgentSession, silence_seconds: float) -> AgentSession | None:
        """Register a session unless another instance of its agent is connected, to this
        replica or any other.

        Returns the stale session of the same instance on this replica that ``session``
        replaces (closed and forgotten here), if there was one; a stale session on another
        replica is ended in the database and closed there. Admissions of one agent name are
        serialised by the database (a lock per pool and name), so two Hellos of one name
        cannot both pass, even on two replicas.

        Raises:
            AlreadyExists: a session of another instance with this name is connected to the
                pool; the message says which, and how the agent gets in.
        """
        key = (session.pool_id, session.agent_name)
        # Hellos of one name on this replica are admitted one after the other, so that the
        # second sees the first registered here, not only its row.
        lock, users = self._admitting.get(key, (asyncio.Lock(), 0))
        self._admitting[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._admit(session, silence_seconds)
        finally:
            lock, users = self._admitting[key]
            if users == 1:
                del self._admitting[key]
            else:
                self._admitting[key] = (lock, users - 1)

    async def _admit(self, session: AgentSession, silence_seconds: float) -> AgentSession | None:
        now = clock.now()
        async with self._db.write() as conn:
            await cluster_repo.lock_agent_name(
                conn, self._db.dialect, session.pool_id, session.agent_name
            )
            holder = await cluster_repo.live_session_named(
                conn, session.pool_id, session.agent_name
            )
            if holder is not None:
                # A session of this replica counts while its stream is connected (one that is
                # ending is forgotten here before its row is ended); another replica's, while
                # its row says so.
                if self._holds_connected(holder):
                    self._check_same_instance(
                        session, holder.instance_id, holder.connected_at, silence_seconds
                    )
                await cluster_repo.end_sessions(conn, [holder.id], now)
            await cluster_repo.open_session(
                conn,
                cluster_repo.SessionRecord(
                    id=session.id,
                    replica_id=self._replica_id,
                    pool_id=session.pool_id,
                    agent_name=session.agent_name,
                    instance_id=session.instance_id,
                    token_id=session.token_id,
                    capacity=session.slots or session.credits,
                    connected_at=session.connected_at,
                    free_credit=session.credits,
                    last_seen_at=session.last_seen,
                ),
            )
        replaced = None
        if holder is not None:
            # The same process is back on a new stream: what it was assigned on the old one
            # it may be running, so those assignments wait for their lease (or its re-report).
            stale = self._sessions.get(holder.id)
            if stale is not None and self.connected(stale):
                self._close_stale(stale)
                replaced = stale
            elif stale is None and holder.replica_id != self._replica_id:
                self._bus.publish(CLOSE_SESSION, holder.id)
        self._sessions[session.id] = session
        return replaced

    def forget(self, session: AgentSession) -> None:
        """Forget a session whose stream ended (``ended`` records it in the database)."""
        self._sessions.pop(session.id, None)
        self._recorded.pop(session.id, None)

    def activity(self) -> list[cluster_repo.SessionActivity]:
        """The credit and last heartbeat of this replica's sessions whose row no longer says
        so (``recorded`` once written), for every replica to show."""
        return [
            cluster_repo.SessionActivity(session.id, session.credits, session.last_seen)
            for session in self._sessions.values()
            if self._recorded.get(session.id) != (session.credits, session.last_seen)
        ]

    def recorded(self, activity: list[cluster_repo.SessionActivity]) -> None:
        """``activity`` is in the database now."""
        for item in activity:
            if item.id in self._sessions:
                self._recorded[item.id] = (item.free_credit, item.last_seen_at)

    async def ended(self, sessions: list[AgentSession]) -> None:
        """Record in the database that these sessions' streams ended."""
        async with self._db.write() as conn:
            await cluster_repo.end_sessions(conn, [s.id for s in sessions], clock.now())

    def connected(self, session: AgentSession) -> bool:
        """Whether ``session`` is registered here and its stream is not ending."""
        return self._sessions.get(session.id) is session and not session.closing

    async def holder_connected(self, conn: AsyncConnection, session_id: str | None) -> bool:
        """Whether the session ``session_id`` is connected, to this replica or another."""
        if not session_id:
            return False
        local = self._sessions.get(session_id)
        if local is not None:
            return self.connected(local)
        record = await cluster_repo.live_session(conn, session_id)
        return record is not None and self._holds_connected(record)

    def _holds_connected(self, record: cluster_repo.SessionRecord) -> bool:
        """Whether the live row ``record`` stands for a connected stream."""
        if record.replica_id != self._replica_id:
            return True
        local = self._sessions.get(record.id)
        return local is not None and self.connected(local)

    def all(self) -> list[AgentSession]:
        """Every session connected to this replica."""
        return list(self._sessions.values())

    async def count_by_pool(self, pool_ids: Iterable[str] | None = None) -> dict[str, int]:
        """How many agents are connected to each pool (of ``pool_ids``, or every pool), over
        all replicas; pools with none are left out."""
        async with self._db.read() as conn:
            return await cluster_repo.live_sessions_by_pool(conn, pool_ids)

    def with_credit(self) -> dict[str, list[AgentSession]]:
        """This replica's sessions that can take an assignment, by pool id, most credit first."""
        pools: dict[str, list[AgentSession]] = {}
        for session in self._sessions.values():
            if session.credits > 0:
                pools.setdefault(session.pool_id, []).append(session)
        for sessions in pools.values():
            sessions.sort(key=lambda s: s.credits, reverse=True)
        return pools

    def tell_cancel(self, session_id: str | None, message: CancelMessage) -> None:
        """Tell the agent of ``session_id`` to tear a run down, on whichever replica it is."""
        if not session_id:
            return
        session = self._sessions.get(session_id)
        if session is not None:
            session.send(message)
            return
        reason = message.reason[:MAX_HINT_REASON_CHARS]
        self._bus.publish(CANCEL, f"{session_id}:{message.run_id}:{message.attempt}:{reason}")

    def _cancel_hint(self, argument: str) -> None:
        session_id, run_id, attempt, reason = argument.split(":", 3)
        session = self._sessions.get(session_id)
        if session is not None:
            session.send(CancelMessage(run_id, int(attempt), reason))

    def _close_hint(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            self._close_stale(session)

    def _revoked_hint(self, token_id: str) -> None:
        for session in self.all():
            if session.token_id == token_id:
                session.revoke()

    def _close_stale(self, session: AgentSession) -> None:
        session.keep_assignments = True
        session.close()
        self.forget(session)

    @staticmethod
    def _check_same_instance(
        session: AgentSession, instance_id: str, since: datetime, silence_seconds: float
    ) -> None:
        # Without an instance id (an older agent) a reconnect cannot be told from a second
        # agent: refusing is the safe answer, and the agent's retries get it in later.
        if not session.instance_id or instance_id != session.instance_id:
            raise AlreadyExists(_name_taken(session, instance_id, since, silence_seconds))


#: A cancel's reason as sent to another replica in a hint (the agent only logs it).
MAX_HINT_REASON_CHARS = 500


def _name_taken(
    session: AgentSession, holder_instance: str, since: datetime, silence_seconds: float
) -> str:
    def instance(instance_id: str) -> str:
        return repr(instance_id) if instance_id else "an unnamed instance (an older agent)"

    return (
        f"hello.agent_name: pool {session.pool_name!r} already has a connected agent named "
        f"{session.agent_name!r} (instance {instance(holder_instance)}, connected since "
        f"{since:%Y-%m-%d %H:%M:%S} UTC); this one is instance "
        f"{instance(session.instance_id)}. If it is a different agent, give each agent of the pool its own "
        "name (flowyard-agent --name or FLOWYARD_AGENT_NAME; 'flowyard agent install --name'). "
        "If it replaces that agent (a restart or rollout while the old one is still "
        "connected), it is let in once the old session ends, at the latest after "
        f"{silence_seconds:g} s of silence from it; the agent keeps retrying until then."
    )
