"""task runs, and the task run that wrote each log line

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.store.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column: a plain ALTER TABLE on both databases, no copy of the lines.
    op.add_column("log_lines", sa.Column("task_run", sa.String(200), nullable=True))
    op.create_table(
        "task_runs",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("flow_attempt", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("start_time", UTCDateTime, nullable=True),
        sa.Column("end_time", UTCDateTime, nullable=True),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("error_message", sa.String(4000), nullable=True),
        sa.Column("inputs", sa.String(2000), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("attempt_errors", sa.JSON(), nullable=True),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["flow_runs.id"],
            name=op.f("fk_task_runs_run_id_flow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "flow_attempt", "id", name=op.f("pk_task_runs")),
    )
    op.create_index(
        op.f("ix_task_runs_run_id_flow_attempt_first_seq"),
        "task_runs",
        ["run_id", "flow_attempt", "first_seq"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_task_runs_run_id_flow_attempt_first_seq"), table_name="task_runs")
    op.drop_table("task_runs")
    with op.batch_alter_table("log_lines", schema=None) as batch_op:
        batch_op.drop_column("task_run")
