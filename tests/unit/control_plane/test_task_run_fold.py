"""Folding a batch's task-run events into one row per task run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from control_plane.models import LogRecord, LogStream, TaskRunEvent, TaskRunState
from control_plane.store.task_runs import fold

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def line(
    seq: int,
    task_run_id: str = "",
    state: TaskRunState = TaskRunState.RUNNING,
    attempt: int = 1,
    *,
    flow_attempt: int = 1,
    **fields: Any,
) -> LogRecord:
    event = (
        TaskRunEvent(task_run_id, f"{task_run_id}-0", "task", state, attempt, **fields)
        if task_run_id
        else None
    )
    return LogRecord(
        "r" * 32,
        flow_attempt,
        seq,
        T0 + timedelta(seconds=seq),
        20,
        LogStream.LOGGER,
        "flow",
        "text",
        task_run_event=event,
    )


def test_a_batch_without_events_folds_to_nothing() -> None:
    assert fold([line(1), line(2)]) == []


def test_events_fold_in_seq_order_into_one_row_per_task_run() -> None:
    rows = fold(
        [
            line(5, "a", TaskRunState.COMPLETED, 2),
            line(1, "a", TaskRunState.RUNNING, 1, inputs="n=1", tags=("x",)),
            line(2, "b", TaskRunState.RUNNING, 1, inputs="m"),
            line(3, "a", TaskRunState.RETRYING, 1, error_type="E", error_message="boom"),
            line(4, "a", TaskRunState.RUNNING, 2, inputs="later", tags=("y",)),
            line(6),
        ]
    )
    a, b = sorted(rows, key=lambda row: row["id"])
    assert a["state"] == "COMPLETED" and a["attempts"] == 2
    assert (a["first_seq"], a["last_seq"]) == (1, 5)
    assert (a["start_time"], a["end_time"]) == (
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=5),
    )
    assert (a["error_type"], a["error_message"]) == ("E", "boom")
    assert (a["inputs"], a["tags"]) == ("n=1", ["x"])
    assert b["state"] == "RUNNING" and b["end_time"] is None and b["tags"] is None
    assert (b["error_type"], b["error_message"]) == (None, None)


def test_the_same_task_run_id_in_two_flow_attempts_is_two_task_runs() -> None:
    rows = fold([line(1, "a"), line(1, "a", flow_attempt=2)])
    assert sorted(row["flow_attempt"] for row in rows) == [1, 2]


def test_a_finished_task_run_ignores_later_events() -> None:
    (row,) = fold([line(1, "a", TaskRunState.FAILED), line(2, "a", TaskRunState.RUNNING, 2)])
    assert (row["state"], row["attempts"], row["last_seq"]) == ("FAILED", 1, 1)
