"""Repository of task runs. Functions take a connection and never commit.

The engine reports every change of a task run as an event on a log line, so the changes are
numbered, acknowledged and resent like the lines. ``apply_events`` folds the events of the
lines being stored into one row per task run and upserts them with one statement executed
for all the rows (compiled once and cached; SQLite's ``executemany``, psycopg's pipeline),
in the transaction that stores the lines; a row moves only forward (a change older than the last
one applied, as a resent batch brings, is ignored) and a finished task run never changes
again. ``end_unfinished`` is what a run's ending attempt does to the task runs it leaves
running (``runs.compare_and_set``), for runs flagged as having task runs
(``flow_runs.has_task_runs``, set by ``apply_events``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.models import (
    UNFINISHED_TASK_RUN_STATES,
    LogRecord,
    TaskRunRecord,
    TaskRunState,
)
from control_plane.store.dialects import insert_or_update
from control_plane.store.tables import flow_runs, task_runs

#: Failed attempts whose error a task run keeps, and characters of each.
MAX_ATTEMPT_ERRORS = 50
ATTEMPT_ERROR_CHARS = 1000
_FAILED_ATTEMPT = frozenset({TaskRunState.RETRYING, TaskRunState.FAILED})

_UNFINISHED = sorted(state.value for state in UNFINISHED_TASK_RUN_STATES)
_KEY = ["run_id", "flow_attempt", "id"]


def fold(lines: Iterable[LogRecord]) -> list[dict[str, Any]]:
    """One row per task run from the events on ``lines``, applied in seq order.

    State, attempts and name are the latest; start time is the time of the first event's
    line, end time that of a terminal event's; errors are the latest non-empty, inputs and
    tags the first non-empty; ``first_seq``/``last_seq`` the seqs of the first and the last
    event folded. Events after a terminal one are ignored: a finished task run is final.
    """
    events = sorted(
        (line for line in lines if line.task_run_event is not None),
        key=lambda line: (line.run_id, line.attempt, line.seq),
    )
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    for line in events:
        event = line.task_run_event
        assert event is not None
        # A subflow's task runs are its own (attempt 1 of the subflow run).
        run_id, attempt = (line.subflow_run, 1) if line.subflow_run else (line.run_id, line.attempt)
        key = (run_id, attempt, event.task_run_id)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "run_id": run_id,
                "flow_attempt": attempt,
                "id": event.task_run_id,
                "start_time": line.timestamp,
                "end_time": None,
                "error_type": None,
                "error_message": None,
                "inputs": None,
                "tags": None,
                "attempt_errors": None,
                "first_seq": line.seq,
                "attempts": 0,
            }
        elif TaskRunState(row["state"]).is_terminal or line.seq <= row["last_seq"]:
            continue
        row["name"] = event.name
        row["task_name"] = event.task_name
        row["state"] = event.state.value
        row["attempts"] = max(row["attempts"], event.attempt)
        row["last_seq"] = line.seq
        if event.state.is_terminal:
            row["end_time"] = line.timestamp
        if event.error_type:
            row["error_type"] = event.error_type
        if event.error_message:
            row["error_message"] = event.error_message
        if event.error_type and event.state in _FAILED_ATTEMPT:
            errors = row["attempt_errors"] = row["attempt_errors"] or {}
            if len(errors) < MAX_ATTEMPT_ERRORS:
                text = f"{event.error_type}: {event.error_message}".rstrip(": ")
                errors[str(event.attempt)] = text[:ATTEMPT_ERROR_CHARS]
        if event.inputs and row["inputs"] is None:
            row["inputs"] = event.inputs
        if event.tags and row["tags"] is None:
            row["tags"] = list(event.tags)
    return list(rows.values())


async def apply_events(conn: AsyncConnection, lines: Sequence[LogRecord], dialect: str) -> None:
    """Fold the task-run events on ``lines`` and upsert one row per task run."""
    rows = fold(lines)
    if rows:
        await conn.execute(_upsert(dialect), rows)
        await conn.execute(_FLAG_RUNS, {"run_ids": sorted({row["run_id"] for row in rows})})


#: Marks the runs that have task runs (``flow_runs.has_task_runs``): only the first batch of a
#: run's events changes its row; the flag does not change the run's version.
_FLAG_RUNS = (
    update(flow_runs)
    .where(
        flow_runs.c.id.in_(bindparam("run_ids", expanding=True)),
        flow_runs.c.has_task_runs.is_(False),
    )
    .values(has_task_runs=True)
)


@functools.cache
def _upsert(dialect: str) -> Any:
    """The upsert statement, built once per dialect (it holds no row)."""
    stored = task_runs.c

    def set_(new: Any) -> dict[str, Any]:
        return {
            "name": new.name,
            "task_name": new.task_name,
            "state": new.state,
            "attempts": case((new.attempts > stored.attempts, new.attempts), else_=stored.attempts),
            "start_time": func.coalesce(stored.start_time, new.start_time),
            "end_time": func.coalesce(new.end_time, stored.end_time),
            "error_type": func.coalesce(new.error_type, stored.error_type),
            "error_message": func.coalesce(new.error_message, stored.error_message),
            "inputs": func.coalesce(stored.inputs, new.inputs),
            "tags": func.coalesce(stored.tags, new.tags),
            "attempt_errors": _merged(stored.attempt_errors, new.attempt_errors, dialect),
            "first_seq": case(
                (new.first_seq < stored.first_seq, new.first_seq), else_=stored.first_seq
            ),
            "last_seq": new.last_seq,
        }

    def newer(new: Any) -> Any:
        # The states as constants in the SQL: executed for many rows, a statement may not
        # carry a list parameter.
        unfinished: list[Any] = [literal_column(f"'{state}'") for state in _UNFINISHED]
        return and_(new.last_seq > stored.last_seq, stored.state.in_(unfinished))

    return insert_or_update(task_runs, dialect, _KEY, set_, newer)


def _merged(stored: Any, new: Any, dialect: str) -> Any:
    """The two JSON objects of errors by attempt merged (the new one wins a key): a batch
    resent with an error already stored sets the same key again, never a second entry."""
    if dialect == "postgresql":
        empty = cast(literal("{}"), JSONB)
        merged = func.coalesce(cast(stored, JSONB), empty).op("||")(
            func.coalesce(cast(new, JSONB), empty)
        )
        return case((and_(stored.is_(None), new.is_(None)), None), else_=cast(merged, JSON))
    return case(
        (stored.is_(None), new),
        (new.is_(None), stored),
        else_=func.json_patch(stored, new),
    )


async def end_unfinished(
    conn: AsyncConnection, run_ids: Sequence[str], state: TaskRunState, now: datetime
) -> None:
    """Every RUNNING or RETRYING task run of these runs becomes ``state``, ending ``now``.

    For runs whose attempt is ending: earlier attempts' task runs were ended with theirs, so
    what is unfinished belongs to the attempt that ends.
    """
    await conn.execute(
        _END_UNFINISHED, {"run_ids": list(run_ids), "b_state": state.value, "b_end": now}
    )


#: Built once: it runs as every attempt ends.
_END_UNFINISHED = (
    update(task_runs)
    .where(
        task_runs.c.run_id.in_(bindparam("run_ids", expanding=True)),
        task_runs.c.state.in_(_UNFINISHED),
    )
    .values(
        state=bindparam("b_state"),
        end_time=bindparam("b_end", type_=task_runs.c.end_time.type),
    )
)


async def list_page(
    conn: AsyncConnection,
    run_id: str,
    *,
    task_name: str,
    limit: int,
    after: tuple[int, int, str] | None,
) -> list[TaskRunRecord]:
    """Up to ``limit`` task runs of a run in the order they started: by attempt, then by the
    seq of their first event (then id); ``after`` is the (attempt, first seq, id) of the last
    task run of the previous page."""
    c = task_runs.c
    query = select(task_runs).where(c.run_id == run_id)
    if task_name:
        query = query.where(c.task_name == task_name)
    if after is not None:
        attempt, seq, last_id = after
        query = query.where(
            tuple_(c.flow_attempt, c.first_seq, c.id) > tuple_(attempt, seq, last_id)
        )
    query = query.order_by(c.flow_attempt, c.first_seq, c.id).limit(limit)
    return [
        TaskRunRecord(
            id=row.id,
            run_id=row.run_id,
            flow_attempt=row.flow_attempt,
            name=row.name,
            task_name=row.task_name,
            state=TaskRunState(row.state),
            attempts=row.attempts,
            start_time=row.start_time,
            end_time=row.end_time,
            error_type=row.error_type or "",
            error_message=row.error_message or "",
            inputs=row.inputs or "",
            tags=tuple(row.tags or ()),
            first_seq=row.first_seq,
            last_seq=row.last_seq,
            attempt_errors={int(k): v for k, v in (row.attempt_errors or {}).items()},
        )
        for row in await conn.execute(query)
    ]


async def counts(conn: AsyncConnection, run_id: str) -> dict[TaskRunState, int]:
    """How many task runs a run has in each state (states it has none in are left out)."""
    query = (
        select(task_runs.c.state, func.count())
        .where(task_runs.c.run_id == run_id)
        .group_by(task_runs.c.state)
    )
    return {TaskRunState(row[0]): int(row[1]) for row in await conn.execute(query)}
