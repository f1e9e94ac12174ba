"""overdue runs: an index on (state_type, state_name, scheduled_at)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The reaper's late rule reads SCHEDULED runs still named "Scheduled", oldest first, a
    # page at a time: without it every page sorted every scheduled run (Late ones included).
    op.create_index(
        op.f("ix_flow_runs_state_type_state_name_scheduled_at"),
        "flow_runs",
        ["state_type", "state_name", "scheduled_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_flow_runs_state_type_state_name_scheduled_at"), table_name="flow_runs")
