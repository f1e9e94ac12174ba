"""``flowyard deployment``: list deployments, render their infrastructure, and their schedules."""

from __future__ import annotations

import json

import click

from control_plane.cli import documents, output
from control_plane.cli.session import Session, parse_assignments
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2


@click.group()
def deployment() -> None:
    """Inspect deployments."""


@deployment.command("ls")
@click.option("--pool", "pool_name", default="", help="Only this pool's deployments.")
@output.format_option
@click.pass_obj
def deployment_ls(session: Session, pool_name: str, fmt: str) -> None:
    """List deployments."""
    response = session.stub.ListDeployments(pb.ListDeploymentsRequest(pool=pool_name))
    if fmt != "table":
        document = {"deployments": [documents.deployment(d) for d in response.deployments]}
        output.print_document(document, fmt)
        return
    output.print_table(
        [output.Column(c) for c in ("NAME", "ENTRYPOINT", "POOL", "SOURCE")],
        ((d.name, d.entrypoint, d.pool, source_text(d.source)) for d in response.deployments),
    )


def source_text(source: types_pb2.Source) -> str:
    """Where a deployment's code comes from, in one line."""
    kind = source.WhichOneof("kind")
    if kind == "git":
        ref = f"@{source.git.ref}" if source.git.ref else ""
        return f"{source.git.url}{ref}"
    if kind == "archive":
        return source.archive.url
    return source.local.path


@deployment.command("render")
@click.argument("name")
@click.option(
    "--job-variable",
    "job_variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="Job variable override (repeatable), as for a run.",
)
@click.option(
    "--output", "-o", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True
)
@click.pass_obj
def deployment_render(
    session: Session, name: str, job_variables: tuple[str, ...], fmt: str
) -> None:
    """Dry run: print the infrastructure a run of NAME would get.

    On a Kubernetes pool, the Job manifest the agent submits; on a process pool, the engine
    command, working directory and environment the agent starts it with. Nothing is created.
    The engine token never appears: it reaches the engine through a per-run Secret (or the
    process's environment).
    """
    response = session.stub.RenderDeployment(
        pb.RenderDeploymentRequest(
            deployment_name=name,
            job_variables_json=json.dumps(parse_assignments(job_variables, "--job-variable")),
        )
    )
    manifest = json.loads(response.manifest_json)
    if fmt == "json":
        output.console.print_json(json.dumps(manifest))
    else:
        import yaml

        click.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)


@deployment.group("schedule")
def schedule() -> None:
    """Inspect a deployment's schedules."""


@schedule.command("ls")
@click.argument("name")
@click.option("--upcoming", type=click.IntRange(1, 100), default=5, show_default=True)
@output.format_option
@click.pass_obj
def schedule_ls(session: Session, name: str, upcoming: int, fmt: str) -> None:
    """List NAME's schedules with their next firings and already created runs."""
    response = session.stub.ListSchedules(
        pb.ListSchedulesRequest(deployment_name=name, upcoming=upcoming)
    )
    if fmt != "table":
        output.print_document(documents.schedules(name, response), fmt)
        return
    if response.deployment_paused:
        output.console.print(f"Deployment {name!r} is paused: its schedules create no runs.")
    rows = []
    for status in response.schedules:
        s = status.schedule
        when = (
            f"cron '{s.cron.expression}' {s.cron.timezone or 'UTC'}"
            if s.WhichOneof("kind") == "cron"
            else f"every {s.interval.seconds} s"
        )
        rows.append(
            (
                s.name,
                when,
                "yes" if s.paused else "no",
                "\n".join(output.utc_time(t) for t in status.next_times) or "-",
                "\n".join(
                    f"{r.id} {output.utc_time(r.scheduled_time)}" for r in status.scheduled_runs
                )
                or "-",
            )
        )
    output.print_table(
        [
            output.Column("SCHEDULE"),
            output.Column("WHEN"),
            output.Column("PAUSED"),
            output.Column("NEXT", whole=True),
            output.Column("CREATED RUNS", whole=True),
        ],
        rows,
    )


@deployment.command("pause")
@click.argument("name")
@click.option("--schedule", "schedule_name", default="", help="Only this schedule.")
@click.pass_obj
def deployment_pause(session: Session, name: str, schedule_name: str) -> None:
    """Pause NAME's schedules (or one): no new runs, future scheduled runs are removed."""
    _set_paused(session, name, schedule_name, paused=True)


@deployment.command("resume")
@click.argument("name")
@click.option("--schedule", "schedule_name", default="", help="Only this schedule.")
@click.pass_obj
def deployment_resume(session: Session, name: str, schedule_name: str) -> None:
    """Resume NAME's schedules (or one): upcoming runs are created again."""
    _set_paused(session, name, schedule_name, paused=False)


def _set_paused(session: Session, name: str, schedule_name: str, *, paused: bool) -> None:
    session.stub.PauseDeployment(
        pb.PauseDeploymentRequest(name=name, schedule_name=schedule_name, paused=paused)
    )
    what = (
        f"schedule {schedule_name!r} of deployment {name!r}"
        if schedule_name
        else f"deployment {name!r}"
    )
    output.console.print(f"{'Paused' if paused else 'Resumed'} {what}")
