"""the time of a run attempt's assignment, on the run

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: a plain ALTER TABLE on both databases, no table copy. Attempts assigned before
    # it are timed from their history, as before.
    op.add_column("flow_runs", sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flow_runs") as batch_op:
        batch_op.drop_column("assigned_at")
