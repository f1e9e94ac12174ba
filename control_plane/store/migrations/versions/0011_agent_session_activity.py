"""agent sessions' activity: free credit and when the agent was last heard from

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.store.tables import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written by the replica holding the stream with each of its heartbeats, so that every
    # replica shows an agent's credit and last heartbeat, not only the one it connected to.
    with op.batch_alter_table("agent_sessions") as table:
        table.add_column(sa.Column("free_credit", sa.Integer(), nullable=True))
        table.add_column(sa.Column("last_seen_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_sessions") as table:
        table.drop_column("last_seen_at")
        table.drop_column("free_credit")
