"""What waits for dispatch, per pool queue: read when ``/metrics`` is scraped.

Two grouped reads, whatever the number of runs: the queues themselves (so that a queue with
nothing due reads 0 rather than vanishing from the metrics) and the due SCHEDULED runs
counted by the database per pool and queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.states import StateType
from control_plane.store.tables import UTCDateTime, flow_runs, pools, work_queues

#: The queue a run without one is dispatched from (runs stored before queues existed).
DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class QueueBacklog:
    """The due runs of one pool queue."""

    pool: str
    queue: str
    due: int
    #: The scheduled time of the longest-waiting due run; None when none is due.
    oldest_due_at: datetime | None


async def due_by_queue(conn: AsyncConnection, now: datetime) -> list[QueueBacklog]:
    """Every queue of every pool with its runs SCHEDULED and due at ``now``."""
    names: dict[tuple[str, str | None], tuple[str, str]] = {}
    listed = select(pools.c.id, pools.c.name, work_queues.c.id, work_queues.c.name).outerjoin(
        work_queues, work_queues.c.pool_id == pools.c.id
    )
    for pool_id, pool_name, queue_id, queue_name in await conn.execute(listed):
        names[(pool_id, queue_id)] = (pool_name, queue_name or DEFAULT_QUEUE)
    due = (
        select(
            flow_runs.c.pool_id,
            flow_runs.c.queue_id,
            func.count(),
            func.min(flow_runs.c.scheduled_at, type_=UTCDateTime),
        )
        .where(
            flow_runs.c.state_type == StateType.SCHEDULED.value,
            flow_runs.c.scheduled_at <= now,
        )
        .group_by(flow_runs.c.pool_id, flow_runs.c.queue_id)
    )
    counted: dict[tuple[str, str], tuple[int, datetime | None]] = {
        name: (0, None) for name in names.values()
    }
    pool_names = {pool_id: pool_name for (pool_id, _), (pool_name, _) in names.items()}
    for pool_id, queue_id, count, oldest in await conn.execute(due):
        name = names.get((pool_id, queue_id)) or (
            pool_names.get(pool_id, pool_id),
            DEFAULT_QUEUE,
        )
        before, earliest = counted.get(name, (0, None))
        if earliest is not None and oldest is not None:
            oldest = min(oldest, earliest)
        counted[name] = (before + int(count), oldest or earliest)
    return [
        QueueBacklog(pool, queue, due, oldest) for (pool, queue), (due, oldest) in counted.items()
    ]
