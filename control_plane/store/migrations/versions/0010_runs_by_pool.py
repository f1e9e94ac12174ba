"""runs listed by pool: an index on (pool_id, created_at)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The runs list filtered by pool, newest first, a page at a time.
    op.create_index(
        op.f("ix_flow_runs_pool_id_created_at"),
        "flow_runs",
        ["pool_id", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_flow_runs_pool_id_created_at"), table_name="flow_runs")
