"""The database schema, as SQLAlchemy Core tables.

Every change to these tables comes with an Alembic migration in ``migrations/versions``.
Timestamps are timezone-aware UTC in and out, whatever the database stores.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

pools = Table(
    "pools",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("type", String(16), nullable=False),
    Column("base_job_template", JSON, nullable=False),
    Column("concurrency_limit", Integer, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

work_queues = Table(
    "work_queues",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("pool_id", String(32), ForeignKey("pools.id"), nullable=False),
    Column("name", String(63), nullable=False),
    # Dispatch order: a lower number goes first.
    Column("priority", Integer, nullable=False),
    Column("concurrency_limit", Integer, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("pool_id", "name"),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("flow_name", String(200), nullable=False),
    Column("entrypoint", String(1000), nullable=False),
    Column("source", JSON, nullable=False),
    Column("pool_id", String(32), ForeignKey("pools.id"), nullable=False),
    Column("parameters", JSON, nullable=False),
    Column("parameter_schema", JSON, nullable=True),
    Column("job_variables", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # The user's label for what is deployed (a release number, a git sha).
    Column("version", String(200), nullable=False, server_default=""),
    # Scheduling: queue, retries, concurrency and schedules (see orchestration/scheduling.py).
    Column("queue_id", String(32), ForeignKey("work_queues.id"), nullable=True),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("retry_delay_seconds", Integer, nullable=False, server_default="0"),
    Column("concurrency_limit", Integer, nullable=False, server_default="0"),
    Column("collision_strategy", String(16), nullable=False, server_default="ENQUEUE"),
    Column("paused", Boolean, nullable=False, server_default=false()),
    Column("schedules", JSON, nullable=False, server_default="[]"),
)

flow_runs = Table(
    "flow_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("deployment_id", String(32), ForeignKey("deployments.id"), nullable=False),
    Column("pool_id", String(32), ForeignKey("pools.id"), nullable=False),
    Column("flow_name", String(200), nullable=False),
    Column("parameters", JSON, nullable=False),
    Column("job_variables", JSON, nullable=False),
    Column("idempotency_key", String(200), nullable=True),
    # Current state; the version column makes every change a compare-and-set.
    Column("state_type", String(16), nullable=False),
    Column("state_name", String(64), nullable=False),
    Column("state_message", Text, nullable=False),
    Column("state_time", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_transition_id", String(64), nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("accepted_at", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    # The claim: which agent session holds the current attempt, until when.
    Column("agent_session_id", String(32), nullable=True),
    Column("agent_name", String(200), nullable=False),
    Column("lease_deadline", UTCDateTime, nullable=True),
    Column("infrastructure_id", String(300), nullable=False),
    Column("engine_token_hash", String(64), nullable=True),
    # When the engine of the current attempt last said it is alive.
    Column("last_heartbeat_at", UTCDateTime, nullable=True),
    Column("result_summary", Text, nullable=False),
    # What the engine fetched and ran: a git commit sha or an archive's sha256.
    Column("source_revision", String(128), nullable=False, server_default=""),
    # Scheduling: the queue, the retries allowed, and the schedule that created the run.
    Column("queue_id", String(32), ForeignKey("work_queues.id"), nullable=True),
    Column("max_retries", Integer, nullable=False, server_default="0"),
    Column("schedule_name", String(100), nullable=False, server_default=""),
    # A child run: started by the flow of ``parent_run_id``'s attempt ``parent_attempt``.
    # A subflow runs inside the parent's engine: never dispatched, its lines stored with the
    # parent's (``log_batches.subflow_run``), not counted against concurrency limits.
    Column("parent_run_id", String(32), nullable=True),
    Column("parent_attempt", Integer, nullable=True),
    Column("subflow", Boolean, nullable=False, server_default=false()),
    Column("cancel_with_parent", Boolean, nullable=False, server_default=false()),
    # Set when the run's flow starts its first subflow: only such a run's ending attempt has
    # subflows to end (``runs.end_subflows``), so no other pays a query for it.
    Column("has_subflows", Boolean, nullable=False, server_default=false()),
    # When the current attempt was assigned to an agent (the claim), for the time from there
    # to its engine running, without a read of the history.
    Column("assigned_at", UTCDateTime, nullable=True),
    # Set with the run's first task run (``task_runs.apply_events``): only such a run's ending
    # attempt has task runs to end (``task_runs.end_unfinished``), so no other pays for it.
    Column("has_task_runs", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("deployment_id", "idempotency_key"),
    Index(None, "parent_run_id"),
    # Due runs of a pool in their order, and the active runs of a pool counted by deployment
    # and queue from the index alone (``runs.active_counts``).
    Index(
        "ix_flow_runs_by_pool_state",
        "pool_id",
        "state_type",
        "scheduled_at",
        "subflow",
        "deployment_id",
        "queue_id",
    ),
    Index(None, "deployment_id", "created_at"),
    Index(None, "pool_id", "created_at"),
    Index(None, "created_at"),
    Index(None, "state_type", "lease_deadline"),
    Index(None, "deployment_id", "state_type"),
    # Overdue runs, oldest first (the reaper's late rule), read in pages whatever the backlog.
    Index(None, "state_type", "state_name", "scheduled_at"),
)

run_states = Table(
    "run_states",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("run_id", String(32), ForeignKey("flow_runs.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("type", String(16), nullable=False),
    Column("name", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "run_id", "id"),
)

# Log lines, a row per run of consecutive lines of one attempt (an engine's batch, mostly),
# stored as their ``LogLine`` messages (``store/line_messages.py``): a chatty flow's lines
# cost a row per batch, not per line, to store and to read back. Rows of an attempt never
# overlap: (run, attempt, first_seq) is unique, and each row starts after the last stored.
log_batches = Table(
    "log_batches",
    metadata,
    Column("run_id", String(32), ForeignKey("flow_runs.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    # The subflow run that wrote the lines (NULL outside a subflow): a row holds one's only.
    Column("subflow_run", String(32), nullable=True),
    # ``repeated LogLine lines = 1``, serialized.
    Column("lines", LargeBinary, nullable=False),
    PrimaryKeyConstraint("run_id", "attempt", "first_seq"),
    # Reads start at the row holding the line after a position.
    Index(None, "run_id", "attempt", "last_seq", unique=True),
)

# Task runs (calls of a task inside a flow run). The engine reports their changes as log
# lines; every batch's changes are folded into one row per task run (``store/task_runs.py``),
# which ``first_seq``/``last_seq`` tie to the lines they came from: a change is applied only
# if it is newer than the last one applied, so a resent batch never moves a task run back.
task_runs = Table(
    "task_runs",
    metadata,
    Column("run_id", String(32), ForeignKey("flow_runs.id", ondelete="CASCADE"), nullable=False),
    # The flow run's attempt: the engine chooses ids unique within one attempt.
    Column("flow_attempt", Integer, nullable=False),
    Column("id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("task_name", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("start_time", UTCDateTime, nullable=True),
    Column("end_time", UTCDateTime, nullable=True),
    Column("error_type", String(200), nullable=True),
    Column("error_message", String(4000), nullable=True),
    Column("inputs", String(2000), nullable=True),
    # SQL NULL, not JSON null, when there are none: the upsert keeps the first non-NULL.
    Column("tags", JSON(none_as_null=True), nullable=True),
    # Each failed attempt's error, by attempt number (as a string: JSON object keys).
    Column("attempt_errors", JSON(none_as_null=True), nullable=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "flow_attempt", "id"),
    Index(None, "run_id", "flow_attempt", "first_seq"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    # The public part of a token (before the dot): shown, listed, revoked by.
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    # Agent tokens only: the one pool they may connect to (by name, as agents say it).
    Column("pool", String(63), nullable=False),
    Column("description", String(200), nullable=False),
    # SHA-256 of the whole token; the secret itself is never stored.
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
)

# Control-plane processes serving this database. A replica refreshes ``seen_at`` every few
# seconds; one not seen for longer than the replica timeout is gone, and so are its agent
# sessions (``ended_at`` is then set for it by whoever notices).
replicas = Table(
    "replicas",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
)

# Agent streams, on whichever replica holds them: which agent (pool and name) is connected,
# so that a second instance is refused and a departed one's runs are recognised, wherever the
# agent connects. ``free_credit`` and ``last_seen_at`` are written by the holding replica
# with each of its heartbeats (so they are at most that old), for every replica to show.
agent_sessions = Table(
    "agent_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("replica_id", String(32), nullable=False),
    Column("pool_id", String(32), nullable=False),
    Column("agent_name", String(200), nullable=False),
    Column("instance_id", String(200), nullable=False),
    Column("token_id", String(32), nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("connected_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("free_credit", Integer, nullable=True),
    Column("last_seen_at", UTCDateTime, nullable=True),
    Index("ix_agent_sessions_live", "pool_id", "agent_name", "ended_at"),
    Index("ix_agent_sessions_replica", "replica_id", "ended_at"),
)

# Background passes that must run on one replica at a time (the scheduler, the reaper). The
# holder renews ``expires_at``; another replica takes the lease only once it has run out, and
# every take raises ``fence``, so a holder that lost its lease can tell (its writes check it).
singleton_leases = Table(
    "singleton_leases",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(32), nullable=False),
    Column("fence", BigInteger, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)
