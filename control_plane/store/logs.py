"""Repository of log lines. Functions take a connection and never commit."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import LogRecord, LogStream
from control_plane.store.dialects import insert_ignoring_duplicates
from control_plane.store.tables import log_lines


async def insert_lines(conn: AsyncConnection, lines: Sequence[LogRecord], dialect: str) -> None:
    """Store lines in one statement; a line whose (run, attempt, seq) is stored is skipped."""
    if not lines:
        return
    await conn.execute(
        insert_ignoring_duplicates(log_lines, dialect),
        [
            {
                "run_id": line.run_id,
                "attempt": line.attempt,
                "seq": line.seq,
                "timestamp": line.timestamp,
                "level": line.level,
                "stream": line.stream.value,
                "logger": line.logger,
                "text": line.text,
            }
            for line in lines
        ],
    )


async def max_seq(conn: AsyncConnection, run_id: str, attempt: int) -> int:
    """Highest stored seq of an attempt, 0 if it has no lines."""
    query = select(func.max(log_lines.c.seq)).where(
        log_lines.c.run_id == run_id, log_lines.c.attempt == attempt
    )
    return int((await conn.execute(query)).scalar_one_or_none() or 0)


async def read_after(
    conn: AsyncConnection, run_id: str, attempt: int, seq: int, limit: int
) -> list[LogRecord]:
    """Up to ``limit`` lines after (attempt, seq), ordered by attempt then seq."""
    query = (
        select(log_lines)
        .where(
            log_lines.c.run_id == run_id,
            or_(
                log_lines.c.attempt > attempt,
                and_(log_lines.c.attempt == attempt, log_lines.c.seq > seq),
            ),
        )
        .order_by(log_lines.c.attempt, log_lines.c.seq)
        .limit(limit)
    )
    return [
        LogRecord(
            run_id=row.run_id,
            attempt=row.attempt,
            seq=row.seq,
            timestamp=row.timestamp,
            level=row.level,
            stream=LogStream(row.stream),
            logger=row.logger,
            text=row.text,
        )
        for row in await conn.execute(query)
    ]
