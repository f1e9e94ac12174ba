"""scheduling: work queues; deployment queue, retries, concurrency and schedules

Every existing pool gets its "default" queue, and every existing deployment and run is put
in the default queue of its pool.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work_queues",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("pool_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("concurrency_limit", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pool_id"], ["pools.id"], name="fk_work_queues_pool_id_pools"),
        sa.PrimaryKeyConstraint("id", name="pk_work_queues"),
        sa.UniqueConstraint("pool_id", "name", name="uq_work_queues_pool_id_name"),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue_id", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("retry_delay_seconds", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("concurrency_limit", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("collision_strategy", sa.String(16), nullable=False, server_default="ENQUEUE")
        )
        batch_op.add_column(
            sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("schedules", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.create_foreign_key(
            "fk_deployments_queue_id_work_queues", "work_queues", ["queue_id"], ["id"]
        )
    with op.batch_alter_table("flow_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue_id", sa.String(32), nullable=True))
        batch_op.add_column(
            sa.Column("max_retries", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("schedule_name", sa.String(100), nullable=False, server_default="")
        )
        batch_op.create_foreign_key(
            "fk_flow_runs_queue_id_work_queues", "work_queues", ["queue_id"], ["id"]
        )
        batch_op.create_index(
            "ix_flow_runs_deployment_id_state_type", ["deployment_id", "state_type"]
        )
    _backfill_default_queues()


def _backfill_default_queues() -> None:
    bind = op.get_bind()
    pools = sa.table("pools", sa.column("id", sa.String))
    queues = sa.table(
        "work_queues",
        sa.column("id", sa.String),
        sa.column("pool_id", sa.String),
        sa.column("name", sa.String),
        sa.column("priority", sa.Integer),
        sa.column("concurrency_limit", sa.Integer),
        sa.column("paused", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    for (pool_id,) in bind.execute(sa.select(pools.c.id)).all():
        queue_id = uuid.uuid4().hex
        bind.execute(
            queues.insert().values(
                id=queue_id,
                pool_id=pool_id,
                name="default",
                priority=10,
                concurrency_limit=0,
                paused=False,
                created_at=now,
                updated_at=now,
            )
        )
        for table in ("deployments", "flow_runs"):
            target = sa.table(table, sa.column("pool_id", sa.String), sa.column("queue_id"))
            bind.execute(
                target.update().where(target.c.pool_id == pool_id).values(queue_id=queue_id)
            )


def downgrade() -> None:
    with op.batch_alter_table("flow_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_flow_runs_deployment_id_state_type")
        batch_op.drop_constraint("fk_flow_runs_queue_id_work_queues", type_="foreignkey")
        batch_op.drop_column("schedule_name")
        batch_op.drop_column("max_retries")
        batch_op.drop_column("queue_id")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_constraint("fk_deployments_queue_id_work_queues", type_="foreignkey")
        for column in (
            "schedules",
            "paused",
            "collision_strategy",
            "concurrency_limit",
            "retry_delay_seconds",
            "retries",
            "queue_id",
        ):
            batch_op.drop_column(column)
    op.drop_table("work_queues")
