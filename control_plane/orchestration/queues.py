"""Use cases for work queues and pool switches: create or change a queue, pause a pool.

Every pool has a queue named "default" (created with the pool). A queue's priority orders
dispatch (lower first); its concurrency limit caps its runs in PENDING, RUNNING or
CANCELLING; a paused queue dispatches nothing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.errors import InvalidArgument, NotFound
from control_plane.models import DEFAULT_QUEUE, Pool, WorkQueue
from control_plane.orchestration import clock, validation
from control_plane.store import catalog as catalog_repo
from control_plane.store import queues as repo
from control_plane.store.db import Database, after_lost_races

MAX_PRIORITY = 1_000_000
#: Priority of the default queue and of a new queue given none: room above it (1-9) for
#: queues that must go first, and below it for queues that may wait.
DEFAULT_PRIORITY = 10
MAX_QUEUES_PER_POOL = 100


@dataclasses.dataclass(frozen=True)
class QueueSpec:
    """What UpsertQueue asks for."""

    pool: str
    name: str
    priority: int = 0
    concurrency_limit: int = 0
    paused: bool = False


def default_queue(pool_id: str) -> WorkQueue:
    """The "default" queue a new pool gets."""
    now = clock.now()
    return WorkQueue(uuid.uuid4().hex, pool_id, DEFAULT_QUEUE, DEFAULT_PRIORITY, 0, False, now, now)


async def resolve(conn: AsyncConnection, pool: Pool, name: str, field: str) -> WorkQueue:
    """The queue ``name`` of ``pool``; NOT_FOUND naming it and listing the pool's queues."""
    validation.pool_name(name, field)
    queue = await repo.get_queue(conn, pool.id, name)
    if queue is None:
        names = ", ".join(q.name for q in await repo.list_queues(conn, pool.id))
        raise NotFound(
            f"{field}: pool {pool.name!r} has no queue {name!r} (its queues: {names}); "
            f"create it with 'flowyard pool queue create {pool.name} {name}'"
        )
    return queue


async def check_names(db: Database, pool: Pool, names: list[str], field: str) -> frozenset[str]:
    """The queue names an agent asked for; NOT_FOUND for one the pool does not have."""
    if len(names) > MAX_QUEUES_PER_POOL:
        raise InvalidArgument(f"{field}: at most {MAX_QUEUES_PER_POOL} queues ({len(names)})")
    if not names:
        return frozenset()
    async with db.read() as conn:
        for index, name in enumerate(names):
            await resolve(conn, pool, name, f"{field}[{index}]")
    return frozenset(names)


class Queues:
    """Queues and the pool-wide switches (limit, pause)."""

    def __init__(self, db: Database, changed: Callable[[], None]) -> None:
        self._db = db
        # A raised limit or a resumed queue may make runs dispatchable at once.
        self._changed = changed

    async def of_pool(self, pool_id: str) -> list[WorkQueue]:
        """A pool's queues in dispatch order."""
        async with self._db.read() as conn:
            return await repo.list_queues(conn, pool_id)

    async def by_pool(self) -> dict[str, list[WorkQueue]]:
        """Every pool's queues, by pool id."""
        result: dict[str, list[WorkQueue]] = {}
        async with self._db.read() as conn:
            for queue in await repo.list_queues(conn):
                result.setdefault(queue.pool_id, []).append(queue)
        return result

    async def upsert(self, spec: QueueSpec) -> tuple[Pool, bool]:
        """Create a queue or change the one with the same name; returns the pool and if new."""
        validation.pool_name(spec.pool, "pool")
        validation.pool_name(spec.name, "queue.name")
        if not 0 <= spec.priority <= MAX_PRIORITY:
            raise InvalidArgument(
                f"queue.priority: must be between 1 and {MAX_PRIORITY} (0 keeps the current "
                f"priority, or {DEFAULT_PRIORITY} for a new queue), got {spec.priority}"
            )
        validation.concurrency_limit(spec.concurrency_limit, "queue.concurrency_limit")
        pool, created = await after_lost_races(lambda: self._store(spec))
        self._changed()
        return pool, created

    async def _store(self, spec: QueueSpec) -> tuple[Pool, bool]:
        """One unit of work of ``upsert``: insert the queue or change it."""
        now = clock.now()
        async with self._db.write() as conn:
            pool = await _pool(conn, spec.pool)
            existing = await repo.get_queue(conn, pool.id, spec.name)
            if existing is None:
                if len(await repo.list_queues(conn, pool.id)) >= MAX_QUEUES_PER_POOL:
                    raise InvalidArgument(
                        f"queue.name: pool {pool.name!r} already has {MAX_QUEUES_PER_POOL} queues"
                    )
                queue = WorkQueue(
                    uuid.uuid4().hex,
                    pool.id,
                    spec.name,
                    spec.priority or DEFAULT_PRIORITY,
                    spec.concurrency_limit,
                    spec.paused,
                    now,
                    now,
                )
                await repo.insert_queue(conn, queue)
            else:
                queue = dataclasses.replace(
                    existing,
                    priority=spec.priority or existing.priority,
                    concurrency_limit=spec.concurrency_limit,
                    paused=spec.paused,
                    updated_at=now,
                )
                await repo.update_queue(conn, queue)
        return pool, existing is None

    async def update_pool(
        self, name: str, concurrency_limit: int | None, paused: bool | None
    ) -> Pool:
        """Change a pool's limit and/or pause switch (None keeps the current value)."""
        validation.pool_name(name)
        if concurrency_limit is not None:
            validation.concurrency_limit(concurrency_limit)
        async with self._db.write() as conn:
            pool = await _pool(conn, name)
            pool = dataclasses.replace(
                pool,
                concurrency_limit=pool.concurrency_limit
                if concurrency_limit is None
                else concurrency_limit,
                paused=pool.paused if paused is None else paused,
                updated_at=clock.now(),
            )
            await repo.update_pool_switches(conn, pool)
        self._changed()
        return pool


async def _pool(conn: AsyncConnection, name: str) -> Pool:
    pool = await catalog_repo.get_pool(conn, name=name)
    if pool is None:
        raise NotFound(f"pool {name!r} not found")
    return pool
