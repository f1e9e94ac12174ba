"""Repository of work queues and of the scheduling columns of deployments.

Functions take a connection and never commit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import Collision, Pool, Schedule, Scheduling, WorkQueue
from control_plane.store.dialects import DriverStatement
from control_plane.store.tables import deployments, pools, work_queues


def _queue(row: Row[Any]) -> WorkQueue:
    return WorkQueue(
        id=row.id,
        pool_id=row.pool_id,
        name=row.name,
        priority=row.priority,
        concurrency_limit=row.concurrency_limit,
        paused=row.paused,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def insert_queue(conn: AsyncConnection, queue: WorkQueue) -> None:
    """Store a new queue (the caller checked that its name is free in the pool)."""
    await conn.execute(
        insert(work_queues).values(
            id=queue.id,
            pool_id=queue.pool_id,
            name=queue.name,
            priority=queue.priority,
            concurrency_limit=queue.concurrency_limit,
            paused=queue.paused,
            created_at=queue.created_at,
            updated_at=queue.updated_at,
        )
    )


async def update_queue(conn: AsyncConnection, queue: WorkQueue) -> None:
    """Store a queue's priority, limit and pause switch."""
    await conn.execute(
        update(work_queues)
        .where(work_queues.c.id == queue.id)
        .values(
            priority=queue.priority,
            concurrency_limit=queue.concurrency_limit,
            paused=queue.paused,
            updated_at=queue.updated_at,
        )
    )


async def get_queue(conn: AsyncConnection, pool_id: str, name: str) -> WorkQueue | None:
    """The queue of a pool with this name, if any."""
    query = select(work_queues).where(work_queues.c.pool_id == pool_id, work_queues.c.name == name)
    row = (await conn.execute(query)).first()
    return _queue(row) if row else None


async def list_queues(conn: AsyncConnection, pool_id: str | None = None) -> list[WorkQueue]:
    """Queues (of one pool, or all), in dispatch order: priority, then name."""
    if pool_id is None:
        return [_queue(row) for row in await conn.execute(_QUEUES)]
    return [_queue(row) for row in await _QUEUES_OF_POOL.records(conn, {"pool_id": pool_id})]


# Built once: every dispatch pass reads its pool's queues and limits.
_QUEUES = select(work_queues).order_by(work_queues.c.priority, work_queues.c.name)
_QUEUES_OF_POOL = DriverStatement(_QUEUES.where(work_queues.c.pool_id == bindparam("pool_id")))


async def update_pool_switches(conn: AsyncConnection, pool: Pool) -> None:
    """Store a pool's concurrency limit and pause switch."""
    await conn.execute(
        update(pools)
        .where(pools.c.id == pool.id)
        .values(
            concurrency_limit=pool.concurrency_limit,
            paused=pool.paused,
            updated_at=pool.updated_at,
        )
    )


async def limited_deployments(
    conn: AsyncConnection, pool_id: str
) -> list[tuple[str, str, int, Collision]]:
    """(id, name, limit, collision strategy) of a pool's deployments that have a limit."""
    return [
        (id, name, limit, Collision(collision))
        for id, name, limit, collision in await _LIMITED_DEPLOYMENTS.rows(
            conn, {"pool_id": pool_id}
        )
    ]


_LIMITED_DEPLOYMENTS = DriverStatement(
    select(
        deployments.c.id,
        deployments.c.name,
        deployments.c.concurrency_limit,
        deployments.c.collision_strategy,
    ).where(deployments.c.pool_id == bindparam("pool_id"), deployments.c.concurrency_limit > 0)
)


def scheduling_values(scheduling: Scheduling, queue_id: str) -> dict[str, Any]:
    """The deployments columns that hold ``scheduling``."""
    return {
        "queue_id": queue_id,
        "retries": scheduling.retries,
        "retry_delay_seconds": scheduling.retry_delay_seconds,
        "concurrency_limit": scheduling.concurrency_limit,
        "collision_strategy": scheduling.collision.value,
        "paused": scheduling.paused,
        "schedules": [_schedule_document(s) for s in scheduling.schedules],
    }


def scheduling_from_row(row: Row[Any]) -> Scheduling:
    """The Scheduling of a deployments row selected with its queue's name as ``queue_name``."""
    return Scheduling(
        queue=row.queue_name or "default",
        retries=row.retries,
        retry_delay_seconds=row.retry_delay_seconds,
        concurrency_limit=row.concurrency_limit,
        collision=Collision(row.collision_strategy),
        paused=row.paused,
        schedules=tuple(_schedule(d) for d in row.schedules or []),
    )


def _schedule_document(schedule: Schedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "interval_seconds": schedule.interval_seconds,
        "anchor": schedule.anchor.isoformat() if schedule.anchor else None,
        "paused": schedule.paused,
        "parameters": schedule.parameters,
    }


def _schedule(document: dict[str, Any]) -> Schedule:
    anchor = document.get("anchor")
    return Schedule(
        name=document["name"],
        cron=document.get("cron", ""),
        timezone=document.get("timezone", ""),
        interval_seconds=document.get("interval_seconds", 0),
        anchor=datetime.fromisoformat(anchor).astimezone(UTC) if anchor else None,
        paused=document.get("paused", False),
        parameters=document.get("parameters", {}),
    )
