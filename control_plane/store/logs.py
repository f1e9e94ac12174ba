"""Repository of log lines. Functions take a connection and never commit.

Lines are stored a row per run of consecutive lines of one attempt (``tables.log_batches``),
as their ``LogLine`` messages (``line_messages``). Each row starts after the last line stored
for its attempt, read in the same transaction with the run's row locked (PostgreSQL,
``runs.lock_runs``; SQLite's one writer serialises them anyway): a line is stored once,
whoever sends it again and through whichever replica, and a read by position finds every
line once, in order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import LogRecord
from control_plane.store import line_messages, runs, task_runs
from control_plane.store.dialects import DriverStatement, padded
from control_plane.store.tables import log_batches

#: Rows a read looks at to choose those it fetches (``read_after``)...
ROWS_PER_READ = 1_024
#: ...and the bytes of lines it fetches at most, beyond its first row.
BYTES_PER_READ = 8 << 20
#: Every batch stored runs these two: on the driver (``DriverStatement``).
_INSERT = DriverStatement(insert(log_batches))


async def insert_lines(
    conn: AsyncConnection,
    batches: Sequence[Sequence[LogRecord]],
    dialect: str,
    locked: bool = False,
) -> None:
    """Store batches of lines, each of consecutive lines of one attempt in seq order; a line
    whose (run, attempt, seq) is stored already is skipped. ``locked``: the transaction
    holds the runs' rows locked already (``runs.attempt_states``).

    The task-run events the lines carry are applied to the task runs in the same
    transaction (``task_runs.apply_events``; a resent event changes nothing).
    """
    attempts: dict[tuple[str, int], Sequence[LogRecord]] = {}
    for batch in batches:
        if not batch:
            continue
        key = (batch[0].run_id, batch[0].attempt)
        same = attempts.get(key)
        if same is None:
            attempts[key] = batch
        else:
            # Two streams' batches of one attempt (its engine reconnected meanwhile): one
            # run of lines, in seq order, each line once.
            merged = {line.seq: line for line in [*same, *batch]}
            attempts[key] = [merged[seq] for seq in sorted(merged)]
    if not locked:
        await runs.lock_runs(conn, dialect, {run_id for run_id, _ in attempts})
    await _store(conn, attempts, await _max_seqs(conn, list(attempts)), dialect)


async def append_lines(
    conn: AsyncConnection,
    dialect: str,
    run_id: str,
    attempt: int,
    lines: Callable[[int], list[LogRecord]],
) -> None:
    """Store lines after the attempt's last: ``lines(seq)`` builds them, from ``seq`` on."""
    await runs.lock_runs(conn, dialect, [run_id])
    stored = await max_seq(conn, run_id, attempt)
    await _store(conn, {(run_id, attempt): lines(stored + 1)}, {(run_id, attempt): stored}, dialect)


async def _store(
    conn: AsyncConnection,
    attempts: dict[tuple[str, int], Sequence[LogRecord]],
    last: dict[tuple[str, int], int],
    dialect: str,
) -> None:
    """Store each attempt's lines (in seq order) after its ``last`` stored seq, with the
    task-run events they carry; the runs' rows are locked."""
    rows = []
    for (run_id, attempt), records in attempts.items():
        stored = last.get((run_id, attempt), 0)
        if records[0].seq <= stored:
            records = [record for record in records if record.seq > stored]
        # A row holds consecutive lines of one subflow (or of none), so that a subflow's
        # lines are read by their rows alone.
        start = 0
        for end in range(1, len(records) + 1):
            if (
                end < len(records)
                and records[end].seq == records[end - 1].seq + 1
                and records[end].subflow_run == records[start].subflow_run
            ):
                continue
            part = records[start:end]
            rows.append(
                {
                    "run_id": run_id,
                    "attempt": attempt,
                    "first_seq": part[0].seq,
                    "last_seq": part[-1].seq,
                    "subflow_run": part[0].subflow_run or None,
                    "lines": line_messages.encode(part),
                }
            )
            start = end
    if rows:
        await _INSERT.execute_many(conn, rows)
    events = [
        line for lines in attempts.values() for line in lines if line.task_run_event is not None
    ]
    if events:
        await task_runs.apply_events(conn, events, dialect)


async def max_seq(conn: AsyncConnection, run_id: str, attempt: int) -> int:
    """Highest stored seq of an attempt, 0 if it has no lines."""
    [(seq,)] = await _MAX_SEQ.rows(conn, {"run_id": run_id, "attempt": attempt})
    return int(seq or 0)


#: It is read as every engine stream opens and every batch is stored.
_MAX_SEQ = DriverStatement(
    select(func.max(log_batches.c.last_seq)).where(
        log_batches.c.run_id == bindparam("run_id"),
        log_batches.c.attempt == bindparam("attempt"),
    )
)


async def _max_seqs(
    conn: AsyncConnection, attempts: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The highest stored seq of each (run, attempt) that has lines: one statement, one
    lookup in the (run, attempt, last seq) index per attempt."""
    if len(attempts) == 1:
        [(run_id, attempt)] = attempts
        return {(run_id, attempt): await max_seq(conn, run_id, attempt)}
    asked = padded(attempts)  # an attempt asked twice is answered the same
    parameters: dict[str, Any] = {}
    for index, (run_id, attempt) in enumerate(asked):
        parameters[f"r{index}"] = run_id
        parameters[f"a{index}"] = attempt
    [seqs] = await _max_seqs_of(len(asked)).rows(conn, parameters)
    return {key: int(seq) for key, seq in zip(attempts, seqs, strict=False) if seq is not None}


@functools.cache
def _max_seqs_of(count: int) -> DriverStatement:
    """The highest seq of ``count`` attempts (parameters ``r<i>``, ``a<i>``), one column each:
    a lookup in the index apiece. A GROUP BY of the rows whose (run, attempt) is in a list
    made SQLite scan the whole index instead, in every transaction that stored lines."""
    c = log_batches.c
    return DriverStatement(
        select(
            *[
                select(func.max(c.last_seq))
                .where(c.run_id == bindparam(f"r{i}"), c.attempt == bindparam(f"a{i}"))
                .scalar_subquery()
                .label(f"m{i}")
                for i in range(count)
            ]
        )
    )


async def any_after(conn: AsyncConnection, run_id: str, attempt: int, seq: int) -> bool:
    """Whether the run has a line after (attempt, seq): one probe of the index."""
    found = await conn.execute(_ANY_AFTER, {"run_id": run_id, "attempt": attempt, "seq": seq})
    return found.first() is not None


#: Built once: a follower asks it after every batch it sends.
_ANY_AFTER = (
    select(log_batches.c.last_seq)
    .where(
        log_batches.c.run_id == bindparam("run_id"),
        tuple_(log_batches.c.attempt, log_batches.c.last_seq)
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
    a subflow run wrote, if ``subflow_run`` is given.

    Two statements: which rows hold those lines (their seqs and sizes, without their lines),
    then the lines of those rows only. Rows hold from one line (a quiet flow's) to a whole
    batch, so a read neither fetches rows it does not need nor one row at a time; and it
    fetches at most ``BYTES_PER_READ`` beyond its first row (fewer lines than ``limit`` then:
    readers read on from the last line they got).
    """
    c = log_batches.c
    where = [
        c.run_id == run_id,
        # A row value, not "attempt > a OR (attempt = a AND last_seq > s)": the index serves
        # it from the position on, not from the run's first row.
        tuple_(c.attempt, c.last_seq) > tuple_(bindparam("attempt"), bindparam("seq")),
    ]
    if subflow_run is not None:
        where.append(c.subflow_run == subflow_run)
    position = {"attempt": attempt, "seq": seq}
    ordered = (c.attempt, c.last_seq)
    sizes = select(c.attempt, c.first_seq, c.last_seq, func.length(c.lines)).where(*where)
    rows = lines = size = 0
    for row_attempt, first, last, length in await conn.execute(
        sizes.order_by(*ordered).limit(ROWS_PER_READ), position
    ):
        rows += 1
        lines += last - max(first - 1, seq if row_attempt == attempt else 0)
        size += length
        if lines >= limit or size >= BYTES_PER_READ:
            break
    if not rows:
        return []
    records: list[LogRecord] = []
    query = select(c.attempt, c.lines).where(*where).order_by(*ordered).limit(rows)
    for row_attempt, data in await conn.execute(query, position):
        after = seq if row_attempt == attempt else 0
        records.extend(line_messages.decode(run_id, data, after, limit - len(records)))
    return records
