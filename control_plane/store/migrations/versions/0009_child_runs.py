"""child runs: subflows and runs started by a flow, and the subflow that wrote each log line

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable or defaulted columns: a plain ALTER TABLE on both databases, no table copy.
    op.add_column("flow_runs", sa.Column("parent_run_id", sa.String(32), nullable=True))
    op.add_column("flow_runs", sa.Column("parent_attempt", sa.Integer(), nullable=True))
    op.add_column(
        "flow_runs",
        sa.Column("subflow", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "flow_runs",
        sa.Column("cancel_with_parent", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "flow_runs",
        sa.Column("has_subflows", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        op.f("ix_flow_runs_parent_run_id"), "flow_runs", ["parent_run_id"], unique=False
    )
    op.add_column("log_lines", sa.Column("subflow_run", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("log_lines", schema=None) as batch_op:
        batch_op.drop_column("subflow_run")
    op.drop_index(op.f("ix_flow_runs_parent_run_id"), table_name="flow_runs")
    with op.batch_alter_table("flow_runs", schema=None) as batch_op:
        batch_op.drop_column("has_subflows")
        batch_op.drop_column("cancel_with_parent")
        batch_op.drop_column("subflow")
        batch_op.drop_column("parent_attempt")
        batch_op.drop_column("parent_run_id")
