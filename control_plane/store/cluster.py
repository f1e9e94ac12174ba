"""What the control-plane replicas of one database share: who is serving, which agent is
connected where, and who holds each singleton pass.

Every row here is written by the replica it is about, except that a replica found silent for
longer than the replica timeout is ended by whoever notices (``end_silent_replicas``), and its
agent sessions with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Exists, and_, bindparam, case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.store.dialects import insert_ignoring_duplicates
from control_plane.store.tables import agent_sessions, replicas, singleton_leases


@dataclass(frozen=True)
class SessionRecord:
    """An agent stream as the database knows it."""

    id: str
    replica_id: str
    pool_id: str
    agent_name: str
    instance_id: str
    token_id: str
    capacity: int
    connected_at: datetime
    #: As of the holding replica's last heartbeat (``report_sessions``).
    free_credit: int
    last_seen_at: datetime


@dataclass(frozen=True)
class SessionActivity:
    """What the replica holding an agent's stream reports of it with each heartbeat."""

    id: str
    free_credit: int
    last_seen_at: datetime


# --- replicas ---


async def register_replica(
    conn: AsyncConnection, replica_id: str, host: str, now: datetime
) -> None:
    """Record a replica that starts serving."""
    await conn.execute(
        replicas.insert().values(id=replica_id, host=host, started_at=now, seen_at=now)
    )


async def replica_hosts(conn: AsyncConnection, replica_ids: Iterable[str]) -> dict[str, str]:
    """Where each of these replicas serves (or served), as it recorded itself."""
    ids = sorted(set(replica_ids))
    if not ids:
        return {}
    query = select(replicas.c.id, replicas.c.host).where(replicas.c.id.in_(ids))
    return {replica_id: host for replica_id, host in await conn.execute(query)}


async def beat(conn: AsyncConnection, replica_id: str, now: datetime) -> bool:
    """Refresh a replica's ``seen_at``; False if it was ended meanwhile (found silent)."""
    result = await conn.execute(
        update(replicas)
        .where(replicas.c.id == replica_id, replicas.c.ended_at.is_(None))
        .values(seen_at=now)
        .returning(replicas.c.id)
    )
    return result.first() is not None


async def reopen_replica(conn: AsyncConnection, replica_id: str, now: datetime) -> None:
    """A replica that was ended while it still served (it was silent too long) serves on;
    its agent sessions stay ended."""
    await conn.execute(
        update(replicas).where(replicas.c.id == replica_id).values(seen_at=now, ended_at=None)
    )


async def end_replica(conn: AsyncConnection, replica_id: str, now: datetime) -> None:
    """A replica stops: it and its agent sessions end now."""
    await conn.execute(
        update(replicas)
        .where(replicas.c.id == replica_id, replicas.c.ended_at.is_(None))
        .values(ended_at=now)
    )
    await conn.execute(
        update(agent_sessions)
        .where(agent_sessions.c.replica_id == replica_id, agent_sessions.c.ended_at.is_(None))
        .values(ended_at=now)
    )


async def end_silent_replicas(conn: AsyncConnection, before: datetime) -> list[str]:
    """End replicas not seen since ``before`` (killed, or cut off from the database), and
    their agent sessions, as of when each was last seen. Returns their ids."""
    result = await conn.execute(
        update(replicas)
        .where(replicas.c.ended_at.is_(None), replicas.c.seen_at < before)
        .values(ended_at=replicas.c.seen_at)
        .returning(replicas.c.id, replicas.c.seen_at)
    )
    ended = list(result)
    for replica_id, seen_at in ended:
        await conn.execute(
            update(agent_sessions)
            .where(agent_sessions.c.replica_id == replica_id, agent_sessions.c.ended_at.is_(None))
            .values(ended_at=seen_at)
        )
    return [replica_id for replica_id, _ in ended]


async def prune(conn: AsyncConnection, ended_before: datetime) -> int:
    """Forget agent sessions and replicas that ended before ``ended_before``; how many rows.

    Every agent connection leaves a row when it ends; kept for a while (the reaper's
    orphaned-submission rule asks whether a run's agent left long enough ago), then deleted,
    so that the table holds about what connected lately, not every reconnect ever made.
    """
    sessions = await conn.execute(
        delete(agent_sessions)
        .where(agent_sessions.c.ended_at < ended_before)
        .returning(agent_sessions.c.id)
    )
    gone = await conn.execute(
        delete(replicas).where(replicas.c.ended_at < ended_before).returning(replicas.c.id)
    )
    return len(list(sessions)) + len(list(gone))


async def live_replicas(conn: AsyncConnection, since: datetime) -> list[str]:
    """Replicas serving now: not ended, and seen since ``since``."""
    query = select(replicas.c.id).where(replicas.c.ended_at.is_(None), replicas.c.seen_at >= since)
    return list((await conn.execute(query)).scalars())


# --- agent sessions ---


async def open_session(conn: AsyncConnection, session: SessionRecord) -> None:
    """Record an agent stream that was let in."""
    await conn.execute(
        agent_sessions.insert().values(
            id=session.id,
            replica_id=session.replica_id,
            pool_id=session.pool_id,
            agent_name=session.agent_name,
            instance_id=session.instance_id,
            token_id=session.token_id,
            capacity=session.capacity,
            connected_at=session.connected_at,
            free_credit=session.free_credit,
            last_seen_at=session.last_seen_at,
        )
    )


async def report_sessions(conn: AsyncConnection, activity: list[SessionActivity]) -> None:
    """Record the credit and last heartbeat of connected sessions (one statement for all)."""
    if not activity:
        return
    row = agent_sessions.c
    await conn.execute(
        update(agent_sessions)
        .where(row.id == bindparam("session_id"), row.ended_at.is_(None))
        .values(free_credit=bindparam("credit"), last_seen_at=bindparam("seen")),
        [{"session_id": a.id, "credit": a.free_credit, "seen": a.last_seen_at} for a in activity],
    )


async def end_sessions(conn: AsyncConnection, session_ids: Iterable[str], now: datetime) -> None:
    """Agent streams that ended (a no-op for those ended already)."""
    ids = sorted(session_ids)
    if not ids:
        return
    await conn.execute(
        update(agent_sessions)
        .where(agent_sessions.c.id.in_(ids), agent_sessions.c.ended_at.is_(None))
        .values(ended_at=now)
    )


async def lock_agent_name(
    conn: AsyncConnection, dialect: str, pool_id: str, agent_name: str
) -> None:
    """Serialise admissions of one agent name until the transaction ends."""
    await _lock(conn, dialect, f"agent:{pool_id}:{agent_name}")


async def lock_pool(conn: AsyncConnection, dialect: str, pool_id: str) -> None:
    """Serialise dispatch passes of one pool until the transaction ends: its concurrency
    slots are counted, then taken, by one replica at a time."""
    await _lock(conn, dialect, f"pool:{pool_id}")


async def _lock(conn: AsyncConnection, dialect: str, name: str) -> None:
    # On SQLite the single writer serialises every write transaction already.
    if dialect == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(name, 0))))


async def live_session_named(
    conn: AsyncConnection, pool_id: str, agent_name: str
) -> SessionRecord | None:
    """The connected session of this agent, on whatever replica, if there is one."""
    query = select(*_SESSION_COLUMNS).where(
        agent_sessions.c.pool_id == pool_id,
        agent_sessions.c.agent_name == agent_name,
        agent_sessions.c.ended_at.is_(None),
    )
    row = (await conn.execute(query)).first()
    return _record(row) if row is not None else None


async def live_session(conn: AsyncConnection, session_id: str | None) -> SessionRecord | None:
    """The session with this id, if it is still connected (to any replica)."""
    if not session_id:
        return None
    query = select(*_SESSION_COLUMNS).where(
        agent_sessions.c.id == session_id, agent_sessions.c.ended_at.is_(None)
    )
    row = (await conn.execute(query)).first()
    return _record(row) if row is not None else None


async def live_sessions_by_pool(
    conn: AsyncConnection, pool_ids: Iterable[str] | None = None
) -> dict[str, int]:
    """How many agents are connected to each pool (pools with none are left out)."""
    query = (
        select(agent_sessions.c.pool_id, func.count())
        .where(agent_sessions.c.ended_at.is_(None))
        .group_by(agent_sessions.c.pool_id)
    )
    if pool_ids is not None:
        query = query.where(agent_sessions.c.pool_id.in_(sorted(pool_ids)))
    return {pool_id: count for pool_id, count in await conn.execute(query)}


async def live_sessions(conn: AsyncConnection, pool_ids: Iterable[str]) -> list[SessionRecord]:
    """The agents connected to ``pool_ids`` now, over all replicas, by name."""
    query = (
        select(*_SESSION_COLUMNS)
        .where(agent_sessions.c.ended_at.is_(None), agent_sessions.c.pool_id.in_(sorted(pool_ids)))
        .order_by(agent_sessions.c.agent_name)
    )
    return [_record(row) for row in await conn.execute(query)]


def session_present(session_id: Any, since: datetime) -> Exists:
    """SQL: the session ``session_id`` is connected, or ended at or after ``since``."""
    return (
        select(agent_sessions.c.id)
        .where(
            agent_sessions.c.id == session_id,
            (agent_sessions.c.ended_at.is_(None)) | (agent_sessions.c.ended_at >= since),
        )
        .exists()
    )


_SESSION_COLUMNS = (
    agent_sessions.c.id,
    agent_sessions.c.replica_id,
    agent_sessions.c.pool_id,
    agent_sessions.c.agent_name,
    agent_sessions.c.instance_id,
    agent_sessions.c.token_id,
    agent_sessions.c.capacity,
    agent_sessions.c.connected_at,
    # Rows written before these columns existed have neither: read as connect-time values.
    func.coalesce(agent_sessions.c.free_credit, agent_sessions.c.capacity),
    func.coalesce(agent_sessions.c.last_seen_at, agent_sessions.c.connected_at),
)


def _record(row: Any) -> SessionRecord:
    return SessionRecord(*row)


# --- singleton leases ---


async def take_lease(
    conn: AsyncConnection,
    dialect: str,
    name: str,
    holder: str,
    now: datetime,
    expires_at: datetime,
) -> int | None:
    """Renew ``name`` for ``holder``, or take it if it ran out; its fence, or None if another
    replica holds it. Taking (not renewing) raises the fence."""
    await conn.execute(
        insert_ignoring_duplicates(singleton_leases, dialect).values(
            name=name, holder="", fence=0, expires_at=now
        )
    )
    row = singleton_leases.c
    result = await conn.execute(
        update(singleton_leases)
        .where(row.name == name, (row.holder == holder) | (row.expires_at <= now))
        .values(
            holder=holder,
            expires_at=expires_at,
            fence=case((row.holder == holder, row.fence), else_=row.fence + 1),
        )
        .returning(row.fence)
    )
    fence = result.scalar()
    return int(fence) if fence is not None else None


async def holds_lease(
    conn: AsyncConnection, dialect: str, name: str, holder: str, fence: int, now: datetime
) -> bool:
    """Whether ``holder`` still holds ``name`` with ``fence``; on PostgreSQL the row stays
    locked until the transaction ends, so no one takes the lease while its writes commit."""
    row = singleton_leases.c
    query = select(row.name).where(
        and_(row.name == name, row.holder == holder, row.fence == fence, row.expires_at > now)
    )
    if dialect == "postgresql":
        query = query.with_for_update(read=True)
    return (await conn.execute(query)).first() is not None


async def release_lease(conn: AsyncConnection, name: str, holder: str, now: datetime) -> None:
    """Give up ``name`` (a replica stopping), so another takes it at once."""
    await conn.execute(
        update(singleton_leases)
        .where(singleton_leases.c.name == name, singleton_leases.c.holder == holder)
        .values(expires_at=now)
    )
