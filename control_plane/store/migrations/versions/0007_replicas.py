"""replicas, agent sessions and singleton leases live in the database

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.store.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("seen_at", UTCDateTime, nullable=False),
        sa.Column("ended_at", UTCDateTime, nullable=True),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("replica_id", sa.String(32), nullable=False),
        sa.Column("pool_id", sa.String(32), nullable=False),
        sa.Column("agent_name", sa.String(200), nullable=False),
        sa.Column("instance_id", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("capacity", sa.Integer, nullable=False),
        sa.Column("connected_at", UTCDateTime, nullable=False),
        sa.Column("ended_at", UTCDateTime, nullable=True),
    )
    op.create_index(
        "ix_agent_sessions_live", "agent_sessions", ["pool_id", "agent_name", "ended_at"]
    )
    op.create_index("ix_agent_sessions_replica", "agent_sessions", ["replica_id", "ended_at"])
    op.create_table(
        "singleton_leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(32), nullable=False),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("singleton_leases")
    op.drop_index("ix_agent_sessions_replica", table_name="agent_sessions")
    op.drop_index("ix_agent_sessions_live", table_name="agent_sessions")
    op.drop_table("agent_sessions")
    op.drop_table("replicas")
