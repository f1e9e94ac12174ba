"""CLI commands for queues, pool switches, schedules and attempts.

``register`` adds them to the ``pool`` and ``deployment`` groups of ``flowyard``.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import click
from rich.table import Table

from control_plane.cli import output
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

COLLISIONS = {
    "enqueue": types_pb2.COLLISION_STRATEGY_ENQUEUE,
    "cancel-new": types_pb2.COLLISION_STRATEGY_CANCEL_NEW,
}


def register(pool: click.Group, deployment: click.Group) -> None:
    """Add the commands of this module to their groups."""
    pool.add_command(pool_set)
    pool.add_command(queue)
    deployment.add_command(schedule)
    deployment.add_command(deployment_pause)
    deployment.add_command(deployment_resume)


def apply_deploy_options(
    message: types_pb2.Deployment,
    *,
    queue: str,
    retries: int,
    retry_delay: int,
    crons: tuple[str, ...],
    timezone: str,
    intervals: tuple[int, ...],
    concurrency_limit: int,
    collision_strategy: str,
) -> None:
    """Set the scheduling fields of ``flowyard deploy`` on a Deployment message."""
    message.queue = queue
    message.retries = retries
    message.retry_delay_seconds = retry_delay
    message.concurrency_limit = concurrency_limit
    message.collision_strategy = COLLISIONS[collision_strategy]
    for index, expression in enumerate(crons):
        message.schedules.append(
            types_pb2.Schedule(
                name=f"cron-{index}",
                cron=types_pb2.CronSchedule(expression=expression, timezone=timezone),
            )
        )
    for index, seconds in enumerate(intervals):
        message.schedules.append(
            types_pb2.Schedule(
                name=f"interval-{index}", interval=types_pb2.IntervalSchedule(seconds=seconds)
            )
        )


@click.command("set")
@click.argument("name")
@click.option("--concurrency-limit", type=int, help="Runs in PENDING/RUNNING at once (0: none).")
@click.option("--pause/--resume", "paused", default=None, help="Stop or restart dispatching.")
@click.pass_obj
def pool_set(session: Any, name: str, concurrency_limit: int | None, paused: bool | None) -> None:
    """Change a pool's concurrency limit, or pause/resume it."""
    request = pb.UpdatePoolRequest(name=name)
    if concurrency_limit is not None:
        request.concurrency_limit = concurrency_limit
    if paused is not None:
        request.paused = paused
    pool = session.stub.UpdatePool(request).pool
    output.console.print(
        f"Pool {pool.name!r}: concurrency limit {pool.concurrency_limit or 'unlimited'}, "
        f"{'paused' if pool.paused else 'dispatching'}"
    )


@click.group("queue")
def queue() -> None:
    """Manage a pool's queues."""


@queue.command("create")
@click.argument("pool_name", metavar="POOL")
@click.argument("name")
@click.option("--priority", type=int, default=0, help="Lower goes first (1 is highest).")
@click.option("--concurrency-limit", type=int, default=0, show_default=True, help="0: none.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.pass_obj
def queue_create(
    session: Any, pool_name: str, name: str, priority: int, concurrency_limit: int, paused: bool
) -> None:
    """Create a queue in POOL, or update the one named NAME."""
    response = session.stub.UpsertQueue(
        pb.UpsertQueueRequest(
            pool=pool_name,
            queue=types_pb2.WorkQueue(
                name=name, priority=priority, concurrency_limit=concurrency_limit, paused=paused
            ),
        )
    )
    verb = "Created" if response.created else "Updated"
    output.console.print(f"{verb} queue {name!r} in pool {pool_name!r}")


@queue.command("ls")
@click.argument("pool_name", metavar="POOL")
@click.pass_obj
def queue_ls(session: Any, pool_name: str) -> None:
    """List a pool's queues in dispatch order."""
    pool = session.stub.GetPool(pb.GetPoolRequest(name=pool_name)).pool
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "PRIORITY", "CONCURRENCY", "PAUSED"):
        table.add_column(column)
    for q in pool.queues:
        table.add_row(
            q.name,
            str(q.priority),
            str(q.concurrency_limit or "unlimited"),
            "yes" if q.paused else "no",
        )
    output.console.print(table)


@click.group("schedule")
def schedule() -> None:
    """Inspect a deployment's schedules."""


@schedule.command("ls")
@click.argument("name")
@click.option("--upcoming", type=click.IntRange(1, 100), default=5, show_default=True)
@click.pass_obj
def schedule_ls(session: Any, name: str, upcoming: int) -> None:
    """List NAME's schedules with their next firings and already created runs."""
    response = session.stub.ListSchedules(
        pb.ListSchedulesRequest(deployment_name=name, upcoming=upcoming)
    )
    if response.deployment_paused:
        output.console.print(f"Deployment {name!r} is paused: its schedules create no runs.")
    table = Table(box=None, pad_edge=False)
    for column in ("SCHEDULE", "WHEN", "PAUSED", "NEXT", "CREATED RUNS"):
        table.add_column(column)
    for status in response.schedules:
        s = status.schedule
        when = (
            f"cron '{s.cron.expression}' {s.cron.timezone or 'UTC'}"
            if s.WhichOneof("kind") == "cron"
            else f"every {s.interval.seconds} s"
        )
        table.add_row(
            s.name,
            when,
            "yes" if s.paused else "no",
            "\n".join(_time(t) for t in status.next_times) or "-",
            "\n".join(f"{r.id} {_time(r.scheduled_time)}" for r in status.scheduled_runs) or "-",
        )
    output.console.print(table)


@click.command("pause")
@click.argument("name")
@click.option("--schedule", "schedule_name", default="", help="Only this schedule.")
@click.pass_obj
def deployment_pause(session: Any, name: str, schedule_name: str) -> None:
    """Pause NAME's schedules (or one): no new runs, future scheduled runs are removed."""
    session.stub.PauseDeployment(
        pb.PauseDeploymentRequest(name=name, schedule_name=schedule_name, paused=True)
    )
    output.console.print(f"Paused {_what(name, schedule_name)}")


@click.command("resume")
@click.argument("name")
@click.option("--schedule", "schedule_name", default="", help="Only this schedule.")
@click.pass_obj
def deployment_resume(session: Any, name: str, schedule_name: str) -> None:
    """Resume NAME's schedules (or one): upcoming runs are created again."""
    session.stub.PauseDeployment(
        pb.PauseDeploymentRequest(name=name, schedule_name=schedule_name, paused=False)
    )
    output.console.print(f"Resumed {_what(name, schedule_name)}")


def attempts_table(history: Any) -> Table:
    """One row per attempt of a run, from its state history: start, end, final state."""
    rows: dict[int, dict[str, str]] = {}
    for state in history:
        row = rows.setdefault(state.attempt, {"start": "-", "end": "-", "state": "", "message": ""})
        name = output.state_name(state.type)
        if name == "RUNNING":
            row["start"] = _time(state.timestamp)
        if name in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            row["end"] = _time(state.timestamp)
        row["state"] = str(output.state_text(state))
        first = state.message.strip().splitlines()[0] if state.message.strip() else ""
        row["message"] = first
    table = Table(box=None, pad_edge=False, title="Attempts", title_justify="left")
    for column in ("ATTEMPT", "START", "END", "FINAL STATE", "MESSAGE"):
        table.add_column(column)
    for attempt, row in sorted(rows.items()):
        table.add_row(str(attempt), row["start"], row["end"], row["state"], row["message"])
    return table


def _time(value: Any) -> str:
    return str(value.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"))


def _what(name: str, schedule_name: str) -> str:
    if schedule_name:
        return f"schedule {schedule_name!r} of deployment {name!r}"
    return f"deployment {name!r}"
