"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "pools",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("base_job_template", sa.JSON(), nullable=False),
        sa.Column("concurrency_limit", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_pools_name")),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("flow_name", sa.String(length=200), nullable=False),
        sa.Column("entrypoint", sa.String(length=1000), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("pool_id", sa.String(length=32), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("parameter_schema", sa.JSON(), nullable=True),
        sa.Column("job_variables", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pool_id"], ["pools.id"], name=op.f("fk_deployments_pool_id_pools")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("name", name=op.f("uq_deployments_name")),
    )
    op.create_table(
        "flow_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("deployment_id", sa.String(length=32), nullable=False),
        sa.Column("pool_id", sa.String(length=32), nullable=False),
        sa.Column("flow_name", sa.String(length=200), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("job_variables", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("state_type", sa.String(length=16), nullable=False),
        sa.Column("state_name", sa.String(length=64), nullable=False),
        sa.Column("state_message", sa.Text(), nullable=False),
        sa.Column("state_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_transition_id", sa.String(length=64), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_session_id", sa.String(length=32), nullable=True),
        sa.Column("agent_name", sa.String(length=200), nullable=False),
        sa.Column("lease_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("infrastructure_id", sa.String(length=300), nullable=False),
        sa.Column("engine_token_hash", sa.String(length=64), nullable=True),
        sa.Column("result_summary", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_flow_runs_deployment_id_deployments"),
        ),
        sa.ForeignKeyConstraint(["pool_id"], ["pools.id"], name=op.f("fk_flow_runs_pool_id_pools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_runs")),
        sa.UniqueConstraint(
            "deployment_id",
            "idempotency_key",
            name=op.f("uq_flow_runs_deployment_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("flow_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flow_runs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_flow_runs_deployment_id_created_at"),
            ["deployment_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_flow_runs_pool_id_state_type_scheduled_at"),
            ["pool_id", "state_type", "scheduled_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_flow_runs_state_type_lease_deadline"),
            ["state_type", "lease_deadline"],
            unique=False,
        )

    op.create_table(
        "log_lines",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(length=8), nullable=False),
        sa.Column("logger", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["flow_runs.id"],
            name=op.f("fk_log_lines_run_id_flow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "attempt", "seq", name=op.f("pk_log_lines")),
    )
    op.create_table(
        "run_states",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["flow_runs.id"],
            name=op.f("fk_run_states_run_id_flow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_states")),
    )
    with op.batch_alter_table("run_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_states_run_id_id"), ["run_id", "id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("run_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_states_run_id_id"))

    op.drop_table("run_states")
    op.drop_table("log_lines")
    with op.batch_alter_table("flow_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flow_runs_state_type_lease_deadline"))
        batch_op.drop_index(batch_op.f("ix_flow_runs_pool_id_state_type_scheduled_at"))
        batch_op.drop_index(batch_op.f("ix_flow_runs_deployment_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_flow_runs_created_at"))

    op.drop_table("flow_runs")
    op.drop_table("deployments")
    op.drop_table("pools")
