"""Repository of log lines. Functions take a connection and never commit."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, func, select, tuple_, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import LogRecord, LogStream
from control_plane.store import task_runs
from control_plane.store.dialects import RAW, BulkInsert, driver_time, time_from_driver
from control_plane.store.tables import log_lines

_STREAMS = {stream.value: stream for stream in LogStream}
_STREAM_VALUES = {stream: stream.value for stream in LogStream}
#: A tail or a chatty flow stores thousands of lines a second: rows go to the driver as is.
_INSERT = BulkInsert(log_lines)


async def insert_lines(conn: AsyncConnection, lines: Sequence[LogRecord], dialect: str) -> None:
    """Store lines in one statement; a line whose (run, attempt, seq) is stored is skipped.

    The task-run events the lines carry are applied to the task runs in the same
    transaction (``task_runs.apply_events``; a resent event changes nothing).
    """
    if not lines:
        return
    time = driver_time(dialect)
    await _INSERT.execute(
        conn,
        [
            (
                line.run_id,
                line.attempt,
                line.seq,
                time(line.timestamp),
                line.level,
                _STREAM_VALUES[line.stream],
                line.logger,
                line.text,
                line.task_run or None,
                line.subflow_run or None,
            )
            for line in lines
        ],
    )
    if any(line.task_run_event is not None for line in lines):
        await task_runs.apply_events(conn, lines, dialect)


async def max_seq(conn: AsyncConnection, run_id: str, attempt: int) -> int:
    """Highest stored seq of an attempt, 0 if it has no lines."""
    seq = (await conn.execute(_MAX_SEQ, {"run_id": run_id, "attempt": attempt})).scalar()
    return int(seq or 0)


#: Built once: it is read as every engine stream opens.
_MAX_SEQ = select(func.max(log_lines.c.seq)).where(
    log_lines.c.run_id == bindparam("run_id"), log_lines.c.attempt == bindparam("attempt")
)


async def any_after(conn: AsyncConnection, run_id: str, attempt: int, seq: int) -> bool:
    """Whether the run has a line after (attempt, seq): one probe of the index."""
    found = await conn.execute(_ANY_AFTER, {"run_id": run_id, "attempt": attempt, "seq": seq})
    return found.first() is not None


#: Built once: a follower asks it after every batch it sends.
_ANY_AFTER = (
    select(log_lines.c.seq)
    .where(
        log_lines.c.run_id == bindparam("run_id"),
        tuple_(log_lines.c.attempt, log_lines.c.seq)
        > tuple_(bindparam("attempt"), bindparam("seq")),
    )
    .limit(1)
)


async def read_after(
    conn: AsyncConnection,
    run_id: str,
    attempt: int,
    seq: int,
    limit: int,
    subflow_run: str | None = None,
) -> list[LogRecord]:
    """Up to ``limit`` lines after (attempt, seq), ordered by attempt then seq; only those
    a subflow run wrote, if ``subflow_run`` is given."""
    c = log_lines.c
    query = (
        select(
            c.attempt,
            c.seq,
            type_coerce(c.timestamp, RAW),
            c.level,
            c.stream,
            c.logger,
            c.text,
            c.task_run,
            c.subflow_run,
        )
        .where(
            c.run_id == run_id,
            # A row value, not "attempt > a OR (attempt = a AND seq > s)": that reads every
            # line of the run before the position (the index serves only run_id), this one
            # starts at the position (16 ms against 0.01 for the end of 100,000 lines).
            tuple_(c.attempt, c.seq) > tuple_(attempt, seq),
        )
        .order_by(c.attempt, c.seq)
        .limit(limit)
    )
    if subflow_run is not None:
        query = query.where(c.subflow_run == subflow_run)
    # Rows unpacked by position, times and streams looked up or parsed by the driver's
    # rules, not SQLAlchemy's: a tail reads every line.
    time = time_from_driver(conn.dialect.name)
    return [
        LogRecord(
            run_id,
            line_attempt,
            line_seq,
            time(timestamp),
            level,
            _STREAMS[stream],
            logger,
            text,
            task_run or "",
            subflow or "",
        )
        for (
            line_attempt,
            line_seq,
            timestamp,
            level,
            stream,
            logger,
            text,
            task_run,
            subflow,
        ) in (await conn.execute(query)).all()
    ]
