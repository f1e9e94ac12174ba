"""log lines stored a row per batch, as their LogLine messages

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from flowyard.v1 import engine_pb2, types_pb2

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

#: Lines a converted row holds at most (an engine's batch holds up to 2,500 by default).
ROW_LINES = 2_500
#: Lines read at a time while converting.
READ_LINES = 10_000
_STREAMS = {
    "unknown": types_pb2.LOG_STREAM_UNSPECIFIED,
    "logger": types_pb2.LOG_STREAM_LOGGER,
    "stdout": types_pb2.LOG_STREAM_STDOUT,
    "stderr": types_pb2.LOG_STREAM_STDERR,
    "system": types_pb2.LOG_STREAM_SYSTEM,
}
_STREAM_NAMES = {wire: name for name, wire in _STREAMS.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_lines = sa.table(
    "log_lines",
    sa.column("run_id", sa.String),
    sa.column("attempt", sa.Integer),
    sa.column("seq", sa.BigInteger),
    sa.column("timestamp", sa.DateTime(timezone=True)),
    sa.column("level", sa.Integer),
    sa.column("stream", sa.String),
    sa.column("logger", sa.String),
    sa.column("text", sa.Text),
    sa.column("task_run", sa.String),
    sa.column("subflow_run", sa.String),
)
_batches = sa.table(
    "log_batches",
    sa.column("run_id", sa.String),
    sa.column("attempt", sa.Integer),
    sa.column("first_seq", sa.BigInteger),
    sa.column("last_seq", sa.BigInteger),
    sa.column("subflow_run", sa.String),
    sa.column("lines", sa.LargeBinary),
)


def upgrade() -> None:
    op.create_table(
        "log_batches",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("subflow_run", sa.String(length=32), nullable=True),
        sa.Column("lines", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["flow_runs.id"],
            name=op.f("fk_log_batches_run_id_flow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "attempt", "first_seq", name=op.f("pk_log_batches")),
    )
    op.create_index(
        op.f("ix_log_batches_run_id_attempt_last_seq"),
        "log_batches",
        ["run_id", "attempt", "last_seq"],
        unique=True,
    )
    connection = op.get_bind()
    if connection.dialect.name == "postgresql" and _has_lz4(connection):
        # A batch's lines are stored compressed (past 2 kB, as PostgreSQL does): with lz4,
        # not the default pglz, which costs several times as much CPU per batch stored
        # (bench/log_lines.py --store postgresql: the last line tailed 16-28 ms after its
        # print against 24-56 ms with pglz). Servers built without lz4 keep pglz.
        op.execute("ALTER TABLE log_batches ALTER COLUMN lines SET COMPRESSION lz4")
    rows: list[dict[str, Any]] = []
    for row in _converted(connection):
        rows.append(row)
        if len(rows) >= 100:
            connection.execute(_batches.insert(), rows)
            rows = []
    if rows:
        connection.execute(_batches.insert(), rows)
    op.drop_table("log_lines")


def _has_lz4(connection: sa.Connection) -> bool:
    """Whether the PostgreSQL server can compress a column with lz4 (14 and later, if built
    with it)."""
    values = connection.execute(
        sa.text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    ).scalar()
    return "lz4" in (values or [])


def _converted(connection: sa.Connection) -> Iterator[dict[str, Any]]:
    """The stored lines as rows of ``log_batches``: consecutive lines of one attempt and one
    subflow (or none), up to ``ROW_LINES`` a row."""
    c = _lines.c
    attempts = connection.execute(
        sa.select(c.run_id, c.attempt).distinct().order_by(c.run_id, c.attempt)
    ).all()
    for run_id, attempt in attempts:
        after = 0
        part: list[Any] = []
        while True:
            read = connection.execute(
                sa.select(_lines)
                .where(c.run_id == run_id, c.attempt == attempt, c.seq > after)
                .order_by(c.seq)
                .limit(READ_LINES)
            ).all()
            for line in read:
                if part and (
                    len(part) >= ROW_LINES
                    or line.seq != part[-1].seq + 1
                    or line.subflow_run != part[-1].subflow_run
                ):
                    yield _row(part)
                    part = []
                part.append(line)
            if len(read) < READ_LINES:
                break
            after = read[-1].seq
        if part:
            yield _row(part)


def _row(lines: list[Any]) -> dict[str, Any]:
    message = engine_pb2.LogBatch()
    for line in lines:
        stamp = line.timestamp
        if isinstance(stamp, str):  # SQLite without the column's type
            stamp = datetime.fromisoformat(stamp)
        stamp = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
        since = stamp - _EPOCH
        wire = message.lines.add(
            run_id=line.run_id,
            attempt=line.attempt,
            seq=line.seq,
            level=line.level,
            stream=_STREAMS.get(line.stream, types_pb2.LOG_STREAM_UNSPECIFIED),
            logger=line.logger,
            text=line.text,
            task_run=line.task_run or "",
            subflow_run=line.subflow_run or "",
        )
        wire.timestamp.seconds = since.days * 86_400 + since.seconds
        wire.timestamp.nanos = since.microseconds * 1_000
    return {
        "run_id": lines[0].run_id,
        "attempt": lines[0].attempt,
        "first_seq": lines[0].seq,
        "last_seq": lines[-1].seq,
        "subflow_run": lines[0].subflow_run,
        "lines": message.SerializeToString(),
    }


def downgrade() -> None:
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
        sa.Column("task_run", sa.String(length=200), nullable=True),
        sa.Column("subflow_run", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["flow_runs.id"],
            name=op.f("fk_log_lines_run_id_flow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "attempt", "seq", name=op.f("pk_log_lines")),
    )
    connection = op.get_bind()
    c = _batches.c
    after: tuple[str, int, int] = ("", 0, 0)
    while True:
        read = connection.execute(
            sa.select(c.run_id, c.attempt, c.first_seq, c.lines)
            .where(sa.tuple_(c.run_id, c.attempt, c.first_seq) > after)
            .order_by(c.run_id, c.attempt, c.first_seq)
            .limit(100)
        ).all()
        for run_id, attempt, first_seq, data in read:
            connection.execute(
                _lines.insert(),
                [
                    {
                        "run_id": run_id,
                        "attempt": attempt,
                        "seq": line.seq,
                        "timestamp": datetime.fromtimestamp(line.timestamp.seconds, UTC).replace(
                            microsecond=line.timestamp.nanos // 1_000
                        ),
                        "level": line.level,
                        "stream": _STREAM_NAMES.get(line.stream, "unknown"),
                        "logger": line.logger,
                        "text": line.text,
                        "task_run": line.task_run or None,
                        "subflow_run": line.subflow_run or None,
                    }
                    for line in engine_pb2.LogBatch.FromString(data).lines
                ],
            )
            after = (run_id, attempt, first_seq)
        if len(read) < 100:
            break
    op.drop_table("log_batches")
