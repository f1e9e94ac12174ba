"""whether a run has task runs, on the run

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An attempt's end ends its unfinished task runs only for runs flagged here: runs that
    # reported task runs before the column existed get it now.
    op.add_column(
        "flow_runs",
        sa.Column("has_task_runs", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(
        "UPDATE flow_runs SET has_task_runs = true "
        "WHERE id IN (SELECT DISTINCT run_id FROM task_runs)"
    )


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch_op:
        batch_op.drop_column("has_task_runs")
