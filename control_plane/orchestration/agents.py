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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control_plane.errors import AlreadyExists
from control_plane.orchestration import clock


@dataclass(frozen=True)
class AssignMessage:
    """Run one attempt (pushed to the agent as ``Assign``)."""

    run_id: str
    attempt: int
    lease_deadline: datetime
    deployment_name: str
    flow_name: str
    base_job_template: dict[str, Any]
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


@dataclass(eq=False)
class AgentSession:
    """One connected agent stream."""

    agent_name: str
    pool_id: str
    pool_name: str
    runtime: str
    credits: int
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
    #: Set once the stream is ending: the session no longer counts as connected by its name.
    closing: bool = False
    #: Set when the server, not the agent, ends the session (the agent went silent, the
    #: server stops): the agent may be running what it was assigned, so its unaccepted
    #: assignments wait for their lease instead of being handed back at once.
    keep_assignments: bool = False

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


#: Departed sessions remembered; older ones count as long gone.
MAX_DEPARTED = 10_000


class AgentRegistry:
    """The sessions connected to this control plane."""

    def __init__(self) -> None:
        self._sessions: dict[str, AgentSession] = {}
        # The latest admitted session of each (pool id, agent name): admit stays O(1) in a
        # fleet of thousands reconnecting at once.
        self._named: dict[tuple[str, str], AgentSession] = {}
        # When sessions ended, for the reaper's "agent gone too long" rule; oldest first.
        self._departed: dict[str, datetime] = {}

    def add(self, session: AgentSession) -> None:
        """Register a session once its Hello was accepted."""
        self._sessions[session.id] = session
        self._named[session.pool_id, session.agent_name] = session

    def admit(self, session: AgentSession, silence_seconds: float) -> AgentSession | None:
        """Register a session unless another instance of its agent is connected.

        Returns the stale session of the same instance that ``session`` replaces (closed and
        forgotten here), if there was one. Check and registration happen without an ``await``
        in between, so two Hellos of one name cannot both pass.

        Raises:
            AlreadyExists: a session of another instance with this name is connected to the
                pool; the message says which, and how the agent gets in.
        """
        holder = self._named.get((session.pool_id, session.agent_name))
        replaced = None
        if holder is not None and self.connected(holder):
            # Without an instance id (an older agent) a reconnect cannot be told from a second
            # agent: refusing is the safe answer, and the agent's retries get it in later.
            if not session.instance_id or holder.instance_id != session.instance_id:
                raise AlreadyExists(_name_taken(session, holder, silence_seconds))
            # The same process is back on a new stream: what it was assigned on the old one
            # it may be running, so those assignments wait for their lease (or its re-report).
            holder.keep_assignments = True
            holder.close()
            self.remove(holder)
            replaced = holder
        self.add(session)
        return replaced

    def remove(self, session: AgentSession) -> None:
        """Forget a session whose stream ended."""
        key = (session.pool_id, session.agent_name)
        if self._named.get(key) is session:
            del self._named[key]
        if self._sessions.pop(session.id, None) is not None:
            self._departed[session.id] = clock.now()
            while len(self._departed) > MAX_DEPARTED:
                del self._departed[next(iter(self._departed))]

    def recently_gone(self, since: datetime) -> set[str]:
        """Sessions that ended at or after ``since`` (still given time to come back)."""
        return {sid for sid, at in self._departed.items() if at >= since}

    def get(self, session_id: str | None) -> AgentSession | None:
        """The connected session with this id, if it is still connected."""
        return self._sessions.get(session_id) if session_id else None

    def connected(self, session: AgentSession) -> bool:
        """Whether ``session`` is registered and its stream is not ending."""
        return self._sessions.get(session.id) is session and not session.closing

    def all(self) -> list[AgentSession]:
        """Every connected session."""
        return list(self._sessions.values())

    def count_in_pool(self, pool_id: str) -> int:
        """How many agents are connected to a pool."""
        return sum(1 for s in self._sessions.values() if s.pool_id == pool_id)

    def with_credit(self) -> dict[str, list[AgentSession]]:
        """Sessions that can take an assignment, by pool id, most credit first."""
        pools: dict[str, list[AgentSession]] = {}
        for session in self._sessions.values():
            if session.credits > 0:
                pools.setdefault(session.pool_id, []).append(session)
        for sessions in pools.values():
            sessions.sort(key=lambda s: s.credits, reverse=True)
        return pools


def _name_taken(session: AgentSession, holder: AgentSession, silence_seconds: float) -> str:
    def instance(s: AgentSession) -> str:
        return repr(s.instance_id) if s.instance_id else "an unnamed instance (an older agent)"

    return (
        f"hello.agent_name: pool {session.pool_name!r} already has a connected agent named "
        f"{session.agent_name!r} (instance {instance(holder)}, connected since "
        f"{holder.connected_at:%Y-%m-%d %H:%M:%S} UTC); this one is instance "
        f"{instance(session)}. If it is a different agent, give each agent of the pool its own "
        "name (flowyard-agent --name or FLOWYARD_AGENT_NAME; 'flowyard agent install --name'). "
        "If it replaces that agent (a restart or rollout while the old one is still "
        "connected), it is let in once the old session ends, at the latest after "
        f"{silence_seconds:g} s of silence from it; the agent keeps retrying until then."
    )
