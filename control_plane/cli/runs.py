"""``flowyard run``, ``runs``, ``logs`` and ``cancel``: start runs, follow them and look back."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import click
import grpc

from control_plane.cli import documents, output
from control_plane.cli.run_ids import resolve_run_id
from control_plane.cli.session import Session, parse_assignments
from control_plane.cli.task_runs import belongs_to, print_run_task_runs, runs_tasks
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2


@click.command("run")
@click.argument("deployment_name", metavar="DEPLOYMENT")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Parameter (repeatable); values are JSON or text.",
)
@click.option(
    "--job-variable",
    "job_variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="Job variable override (repeatable).",
)
@click.option(
    "--idempotency-key", default="", help="Repeat-safe key: the same key returns the same run."
)
@click.option(
    "--watch", is_flag=True, help="Follow the run's logs until it ends; exit 1 unless it COMPLETED."
)
@click.pass_obj
def run_command(
    session: Session,
    deployment_name: str,
    params: tuple[str, ...],
    job_variables: tuple[str, ...],
    idempotency_key: str,
    watch: bool,
) -> None:
    """Create a run of DEPLOYMENT."""
    response = session.stub.CreateRun(
        pb.CreateRunRequest(
            deployment_name=deployment_name,
            parameters_json=json.dumps(parse_assignments(params, "--param")),
            job_variables_json=json.dumps(parse_assignments(job_variables, "--job-variable")),
            idempotency_key=idempotency_key,
        )
    )
    run = response.run
    if response.created:
        output.errors.print(f"Created run {run.id} of {deployment_name!r}")
    else:
        # The key names that run: this call's parameters and job variables are not applied.
        output.errors.print(
            f"Run {run.id} of {deployment_name!r} already exists for idempotency key "
            f"{idempotency_key!r} (its parameters are those it was created with)"
        )
    if not watch:
        output.console.print(run.id)
        return
    with goes_on_when_interrupted(run.id):
        final = follow_logs(session.stub, run.id, follow=True, headers=run.max_retries > 0)
    finish(final)


@contextlib.contextmanager
def goes_on_when_interrupted(run_id: str) -> Iterator[None]:
    """On Ctrl-C, say that the run goes on and how to follow it again, and exit 130.

    Only the CLI stops: the run belongs to the control plane and its agent.
    """
    try:
        yield
    except KeyboardInterrupt:
        output.errors.print(
            f"\nInterrupted: run {run_id} goes on. Follow it again with "
            f"'flowyard logs {run_id} --follow', or stop it with 'flowyard cancel {run_id}'."
        )
        sys.exit(130)


def follow_logs(
    stub: Any,
    run_id: str,
    follow: bool,
    show_attempt: bool = False,
    headers: bool = False,
    as_json: bool = False,
    task: str = "",
) -> types_pb2.RunState:
    """Print a run's logs (history, then live lines with ``follow``); return the last state seen.

    With ``headers`` (runs that may have several attempts), a line ``=== attempt N ===`` comes
    before each attempt's lines. If the stream breaks, it reconnects from the last line
    printed: nothing is missed or printed twice. With ``task``, only the lines of that task
    run (``extract-0``) or of that task's runs (``extract``) are printed.
    """
    attempt, seq = 0, 0
    state = types_pb2.RunState()
    failures = 0
    shown_attempt = 0
    while True:
        try:
            for message in stub.TailLogs(
                pb.TailLogsRequest(
                    run_id=run_id, after_attempt=attempt, after_seq=seq, follow=follow
                )
            ):
                failures = 0
                # Printed a message at a time: a line at a time costs more than the line.
                batch: list[types_pb2.LogLine] = []
                for line in message.lines:
                    if task and not belongs_to(line, task):
                        continue
                    if headers and line.attempt != shown_attempt and not as_json:
                        # One header per attempt, so a retried run's attempts stand apart.
                        output.print_lines(batch, show_attempt)
                        batch = []
                        shown_attempt = line.attempt
                        output.console.print(f"=== attempt {line.attempt} ===", style="bold")
                    batch.append(line)
                if as_json and batch:
                    click.echo(
                        "\n".join(
                            json.dumps(documents.log_line(line), ensure_ascii=False)
                            for line in batch
                        )
                    )
                elif batch:
                    output.print_lines(batch, show_attempt)
                if message.lines:
                    attempt, seq = message.lines[-1].attempt, message.lines[-1].seq
                state = message.state
            return state
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE or failures >= 30:
                raise
            failures += 1
            time.sleep(min(2.0, 0.1 * 2**failures))


def finish(state: types_pb2.RunState) -> None:
    """Print a run's final state; exit 1 unless it COMPLETED."""
    text = output.state_text(state)
    if state.message and output.state_name(state.type) != "COMPLETED":
        output.console.print(text, f"- {output.first_line(state.message)}")
    else:
        output.console.print(text)
    if state.type != types_pb2.STATE_TYPE_COMPLETED:
        sys.exit(1)


@click.group()
def runs() -> None:
    """Inspect runs."""


@runs.command("ls")
@click.option("--deployment", "deployment_name", default="", help="Only this deployment's runs.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(
        [output.state_name(v) for v in types_pb2.StateType.values() if v], case_sensitive=False
    ),
    help="Only runs in this state (repeatable).",
)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@output.format_option
@click.pass_obj
def runs_ls(
    session: Session, deployment_name: str, states: tuple[str, ...], limit: int, fmt: str
) -> None:
    """List runs, newest first."""
    response = session.stub.ListRuns(
        pb.ListRunsRequest(
            deployment_name=deployment_name,
            state_types=[types_pb2.StateType.Value(f"STATE_TYPE_{s.upper()}") for s in states],
            page_size=limit,
        )
    )
    if fmt != "table":
        output.print_document({"runs": [documents.run(r) for r in response.runs]}, fmt)
        return
    output.print_runs(response.runs)


runs.add_command(runs_tasks)


@runs.command("show")
@click.argument("run_id", metavar="RUN")
@output.format_option
@click.pass_obj
def runs_show(session: Session, run_id: str, fmt: str) -> None:
    """Show a run and its state history (RUN: its id or a unique prefix)."""
    run_id = resolve_run_id(session.stub, run_id)
    response = session.stub.GetRun(pb.GetRunRequest(run_id=run_id))
    if fmt != "table":
        output.print_document(documents.run_with_history(response), fmt)
        return
    run = response.run
    output.print_fields(
        [
            ("Run", run.id),
            ("Deployment", run.deployment_name),
            ("Flow", run.flow_name),
            ("Pool", run.pool),
            ("State", output.state_text(run.state)),
            ("Attempt", attempt_text(run, response.history)),
            ("Queue", run.queue or "-"),
            ("Schedule", run.schedule_name or "-"),
            *(
                [("Parent run", f"{run.parent_run_id}{' (subflow)' if run.subflow else ''}")]
                if run.parent_run_id
                else []
            ),
            ("Parameters", run.parameters_json),
            ("Agent", run.agent_name or "-"),
            ("Infrastructure", run.infrastructure_id or "-"),
            ("Result", run.result_summary or "-"),
            ("Source revision", run.source_revision or "-"),
        ]
    )
    output.console.print()
    output.print_table(
        [
            output.Column("TIME", whole=True),
            output.Column("ATTEMPT"),
            output.Column("STATE"),
            output.Column("MESSAGE"),
        ],
        (
            (
                state.timestamp.ToDatetime().strftime("%H:%M:%S.%f")[:-3],
                str(state.attempt),
                output.state_text(state),
                output.first_line(state.message),
            )
            for state in response.history
        ),
        title="History",
    )
    output.console.print()
    print_attempts(response.history)
    print_run_task_runs(session.stub, run.id, response.task_run_counts)
    print_children(response.children)


def print_children(children: Sequence[types_pb2.FlowRun]) -> None:
    """The end of ``runs show``: the runs the flow started."""
    if not children:
        return
    output.console.print()
    output.print_table(
        [
            output.Column("RUN", whole=True),
            output.Column("KIND"),
            output.Column("FLOW"),
            output.Column("DEPLOYMENT"),
            output.Column("STATE"),
            output.Column("MESSAGE"),
        ],
        (
            (
                child.id,
                "subflow" if child.subflow else "deployment run",
                child.flow_name,
                child.deployment_name,
                output.state_text(child.state),
                output.first_line(child.state.message),
            )
            for child in children
        ),
        title=f"Child runs ({len(children)})",
    )


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new lines until the run ends, then its final state; exit 1 unless "
    "it COMPLETED.",
)
@click.option(
    "--output",
    "-o",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line (shape in docs/cli.md).",
)
@click.option(
    "--task",
    default="",
    help="Only the lines written inside this task's runs (extract) or one task run (extract-0).",
)
@click.pass_obj
def logs(session: Session, run_id: str, follow: bool, fmt: str, task: str) -> None:
    """Print a run's logs (a header line per attempt for runs that may be retried).

    RUN is the run's id or a unique prefix of it.
    """
    run_id = resolve_run_id(session.stub, run_id)
    run = session.stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    with goes_on_when_interrupted(run_id):
        final = follow_logs(
            session.stub,
            run_id,
            follow=follow,
            headers=run.max_retries > 0 or run.attempt > 1,
            as_json=fmt == "json",
            task=task,
        )
    if follow and fmt == "text":
        finish(final)
    elif follow and final.type != types_pb2.STATE_TYPE_COMPLETED:
        sys.exit(1)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", default="", help="Why; stored with the state.")
@click.pass_obj
def cancel(session: Session, run_id: str, reason: str) -> None:
    """Cancel a run (RUN: its id or a unique prefix)."""
    run_id = resolve_run_id(session.stub, run_id)
    response = session.stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason=reason))
    output.console.print(f"Run {run_id}:", output.state_text(response.run.state))


def attempt_text(run: Any, history: Any) -> str:
    """The current attempt and the retries used: an attempt handed back (its agent never
    confirmed it) is an attempt but not a retry, so the two numbers can differ."""
    retried = sum(
        1 for s in history if output.state_name(s.type) == "FAILED" and s.attempt < run.attempt
    )
    return f"{run.attempt} (retries used: {retried} of {run.max_retries})"


def print_attempts(history: Any) -> None:
    """One row per attempt of a run, from its state history: start, end, final state."""
    rows: dict[int, dict[str, Any]] = {}
    for state in history:
        row = rows.setdefault(state.attempt, {"start": "-", "end": "-", "state": "", "message": ""})
        name = output.state_name(state.type)
        if name == "RUNNING":
            row["start"] = output.utc_time(state.timestamp)
        if name in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            row["end"] = output.utc_time(state.timestamp)
        row["state"] = output.state_text(state)
        row["message"] = output.first_line(state.message)
    output.print_table(
        [
            output.Column("ATTEMPT"),
            output.Column("START", whole=True),
            output.Column("END", whole=True),
            output.Column("FINAL STATE"),
            output.Column("MESSAGE"),
        ],
        (
            (str(attempt), row["start"], row["end"], row["state"], row["message"])
            for attempt, row in sorted(rows.items())
        ),
        title="Attempts",
    )
