"""``flowyard runs tasks``: a run's task runs; also the table ``runs show`` ends with."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

from control_plane.cli import documents, output
from control_plane.cli.run_ids import resolve_run_id
from control_plane.cli.session import Session
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

#: Task runs ``runs show`` lists before it points to ``runs tasks``.
SHOWN_IN_RUN = 20
PAGE = 1000


@click.command("tasks")
@click.argument("run_id", metavar="RUN")
@click.option("--task", "task_name", default="", help="Only the runs of this task.")
@output.format_option
@click.pass_obj
def runs_tasks(session: Session, run_id: str, task_name: str, fmt: str) -> None:
    """List a run's task runs in the order they started (RUN: its id or a unique prefix)."""
    run_id = resolve_run_id(session.stub, run_id)
    task_runs = list(each_task_run(session.stub, run_id, task_name))
    if fmt != "table":
        output.print_document({"task_runs": [documents.task_run(t) for t in task_runs]}, fmt)
        return
    print_task_runs(task_runs)


def each_task_run(
    stub: Any, run_id: str, task_name: str = "", limit: int | None = None
) -> Iterator[types_pb2.TaskRun]:
    """The run's task runs, page by page (at most ``limit``)."""
    token, count = "", 0
    while True:
        size = PAGE if limit is None else min(PAGE, limit - count)
        response = stub.ListTaskRuns(
            pb.ListTaskRunsRequest(
                run_id=run_id, task_name=task_name, page_size=size, page_token=token
            )
        )
        for task_run in response.task_runs:
            yield task_run
            count += 1
        token = response.next_page_token
        if not token or (limit is not None and count >= limit):
            return


def print_task_runs(task_runs: list[types_pb2.TaskRun], title: str = "") -> None:
    """A table of task runs: name, state, attempts, start, duration, errors."""
    output.print_table(
        [
            output.Column("NAME", whole=True),
            output.Column("STATE"),
            output.Column("ATTEMPTS"),
            output.Column("START", whole=True),
            output.Column("DURATION"),
            output.Column("ERRORS"),
        ],
        (
            (
                t.name,
                documents.task_run_state(t.state),
                str(t.attempts),
                output.utc_time(t.start_time) if t.HasField("start_time") else "-",
                _duration(t),
                _error(t),
            )
            for t in task_runs
        ),
        title=title,
    )


def print_run_task_runs(stub: Any, run_id: str, counts: Any) -> None:
    """The end of ``runs show``: the first task runs, and how to see the rest."""
    total = sum(counts.values())
    if not total:
        return
    summary = ", ".join(
        f"{count} {state.lower()}" for state, count in documents.task_run_counts(counts).items()
    )
    output.console.print()
    print_task_runs(
        list(each_task_run(stub, run_id, limit=SHOWN_IN_RUN)), title=f"Task runs ({summary})"
    )
    if total > SHOWN_IN_RUN:
        output.console.print(f"{total - SHOWN_IN_RUN} more: flowyard runs tasks {run_id}")


def _duration(task_run: types_pb2.TaskRun) -> str:
    if not (task_run.HasField("start_time") and task_run.HasField("end_time")):
        return "-"
    seconds = (task_run.end_time.ToDatetime() - task_run.start_time.ToDatetime()).total_seconds()
    return f"{seconds:.3f} s"


def _error(task_run: types_pb2.TaskRun) -> str:
    """Each failed attempt's error, oldest first (the last error alone if none is listed)."""
    if task_run.attempt_errors:
        return "; ".join(
            f"attempt {attempt}: {output.first_line(error)}"
            for attempt, error in sorted(task_run.attempt_errors.items())
        )
    if not task_run.error_type:
        return "-"
    message = output.first_line(task_run.error_message)
    return f"{task_run.error_type}: {message}" if message else task_run.error_type


def belongs_to(line: types_pb2.LogLine, task: str) -> bool:
    """Whether ``line`` was written by the task run ``task`` or a run of the task ``task``."""
    name = line.task_run
    if not name:
        return False
    return name == task or (name.startswith(f"{task}-") and name[len(task) + 1 :].isdigit())
