"""Repository of pools and deployments. Functions take a connection and never commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import Deployment, Pool, PoolType
from control_plane.store import queues as queues_repo
from control_plane.store.dialects import DriverStatement
from control_plane.store.tables import deployments, pools, work_queues


def _pool(row: Row[Any]) -> Pool:
    return Pool(
        id=row.id,
        name=row.name,
        type=PoolType(row.type),
        base_job_template=row.base_job_template,
        concurrency_limit=row.concurrency_limit,
        paused=row.paused,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def insert_pool(conn: AsyncConnection, pool: Pool) -> None:
    """Store a new pool (the caller checked that its name is free)."""
    await conn.execute(
        insert(pools).values(
            id=pool.id,
            name=pool.name,
            type=pool.type.value,
            base_job_template=pool.base_job_template,
            concurrency_limit=pool.concurrency_limit,
            paused=pool.paused,
            created_at=pool.created_at,
            updated_at=pool.updated_at,
        )
    )


async def get_pool(
    conn: AsyncConnection, *, name: str | None = None, id: str | None = None
) -> Pool | None:
    """The pool with this name or id, if any."""
    query, key = (_POOL_BY_NAME, name) if name is not None else (_POOL_BY_ID, id)
    rows = await query.records(conn, {"key": key})
    return _pool(rows[0]) if rows else None


# Built once: every dispatch pass reads its pool.
_POOL_BY_NAME = DriverStatement(select(pools).where(pools.c.name == bindparam("key")))
_POOL_BY_ID = DriverStatement(select(pools).where(pools.c.id == bindparam("key")))


async def list_pools(conn: AsyncConnection) -> list[Pool]:
    """Every pool, ordered by name."""
    rows = await conn.execute(select(pools).order_by(pools.c.name))
    return [_pool(row) for row in rows]


_DEPLOYMENT_COLUMNS = (
    *deployments.c,
    pools.c.name.label("pool_name"),
    work_queues.c.name.label("queue_name"),
)


def _select_deployments() -> Any:
    return (
        select(*_DEPLOYMENT_COLUMNS)
        .join(pools, pools.c.id == deployments.c.pool_id)
        .outerjoin(work_queues, work_queues.c.id == deployments.c.queue_id)
    )


# Built once: a dispatch pass reads the deployment of the runs it claims, an engine its own.
_DEPLOYMENT_BY_NAME = DriverStatement(
    _select_deployments().where(deployments.c.name == bindparam("key"))
)
_DEPLOYMENT_BY_ID = DriverStatement(
    _select_deployments().where(deployments.c.id == bindparam("key"))
)


def _deployment(row: Row[Any]) -> Deployment:
    return Deployment(
        id=row.id,
        name=row.name,
        flow_name=row.flow_name,
        entrypoint=row.entrypoint,
        source=row.source,
        pool_id=row.pool_id,
        pool_name=row.pool_name,
        parameters=row.parameters,
        parameter_schema=row.parameter_schema,
        job_variables=row.job_variables,
        tags=list(row.tags),
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
        scheduling=queues_repo.scheduling_from_row(row),
        version=row.version,
    )


async def get_deployment(
    conn: AsyncConnection, *, name: str | None = None, id: str | None = None
) -> Deployment | None:
    """The deployment with this name or id, if any."""
    query, key = (_DEPLOYMENT_BY_NAME, name) if name is not None else (_DEPLOYMENT_BY_ID, id)
    rows = await query.records(conn, {"key": key})
    return _deployment(rows[0]) if rows else None


async def list_deployments(
    conn: AsyncConnection, *, pool_id: str | None = None
) -> list[Deployment]:
    """Deployments, optionally of one pool, ordered by name."""
    query = _select_deployments()
    if pool_id is not None:
        query = query.where(deployments.c.pool_id == pool_id)
    rows = await conn.execute(query.order_by(deployments.c.name))
    return [_deployment(row) for row in rows]


def _deployment_values(deployment: Deployment) -> dict[str, Any]:
    return {
        "name": deployment.name,
        "flow_name": deployment.flow_name,
        "entrypoint": deployment.entrypoint,
        "source": deployment.source,
        "pool_id": deployment.pool_id,
        "parameters": deployment.parameters,
        "parameter_schema": deployment.parameter_schema,
        "job_variables": deployment.job_variables,
        "tags": deployment.tags,
        "description": deployment.description,
        "version": deployment.version,
        "updated_at": deployment.updated_at,
    }


async def insert_deployment(conn: AsyncConnection, deployment: Deployment, queue_id: str) -> None:
    """Store a new deployment whose runs go to the queue ``queue_id``."""
    await conn.execute(
        insert(deployments).values(
            id=deployment.id,
            created_at=deployment.created_at,
            **_deployment_values(deployment),
            **queues_repo.scheduling_values(deployment.scheduling, queue_id),
        )
    )


async def update_deployment(conn: AsyncConnection, deployment: Deployment, queue_id: str) -> None:
    """Replace everything but the id and creation time of a stored deployment."""
    await conn.execute(
        update(deployments)
        .where(deployments.c.id == deployment.id)
        .values(
            **_deployment_values(deployment),
            **queues_repo.scheduling_values(deployment.scheduling, queue_id),
        )
    )


async def set_paused(conn: AsyncConnection, deployment: Deployment) -> None:
    """Store only the pause switches of a deployment and of its schedules."""
    document = queues_repo.scheduling_values(deployment.scheduling, "")
    await conn.execute(
        update(deployments)
        .where(deployments.c.id == deployment.id)
        .values(
            paused=document["paused"],
            schedules=document["schedules"],
            updated_at=deployment.updated_at,
        )
    )


async def delete_deployment(conn: AsyncConnection, deployment_id: str) -> None:
    """Remove a deployment (its runs must be gone first)."""
    await conn.execute(delete(deployments).where(deployments.c.id == deployment_id))
