"""``flowyard deploy``: deployments from a project file or from one ENTRYPOINT and its flags.

A project file is read by :mod:`control_plane.cli.project`; the flags are turned into a
Deployment message here. Either way :mod:`control_plane.cli.deploying` applies it and says
what changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from control_plane.cli import output
from control_plane.cli.session import Session, parse_assignments
from flowyard.v1 import types_pb2

COLLISIONS = {
    "enqueue": types_pb2.COLLISION_STRATEGY_ENQUEUE,
    "cancel-new": types_pb2.COLLISION_STRATEGY_CANCEL_NEW,
}


@click.command()
@click.argument("entrypoint", required=False)
@click.option(
    "--file",
    "-f",
    "project_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Project file to apply when no ENTRYPOINT is given [default: ./flowyard.yaml].",
)
@click.option(
    "--name", "-n", default="", help="Deployment name (with --file: apply only this one)."
)
@click.option("--pool", "-p", "pool_name", default="", help="Work pool that runs it.")
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=".",
    show_default=True,
    help="Directory holding the code (or a local checkout of --git-url/--archive-url).",
)
@click.option("--git-url", default="", help="Fetch the code from this git repository.")
@click.option("--git-ref", default="", help="Branch, tag or commit sha (default branch if unset).")
@click.option("--git-subdir", default="", help="Directory of the repository holding the code.")
@click.option("--shallow", is_flag=True, help="Fetch only the commit, not the history.")
@click.option("--git-token-env", default="", help="Environment variable holding the token (HTTPS).")
@click.option(
    "--git-token-secret",
    default="",
    metavar="NAME:KEY",
    help="Kubernetes Secret key the agent exposes to the engine as the token.",
)
@click.option("--archive-url", default="", help="Fetch the code from this .tar.gz/.zip URL.")
@click.option("--sha256", default="", help="Expected sha256 of the archive.")
@click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE", help="Default parameter (repeatable)."
)
@click.option(
    "--job-variable",
    "job_variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="Job variable (repeatable).",
)
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
@click.option("--description", default="", help="Free-form description.")
@click.option("--queue", default="", help="Pool queue runs go to [default: default].")
@click.option("--retries", type=int, default=0, show_default=True, help="Retries of a FAILED run.")
@click.option(
    "--retry-delay", type=int, default=0, show_default=True, help="Seconds before a retry."
)
@click.option("--cron", "crons", multiple=True, metavar="EXPR", help="Cron schedule (repeatable).")
@click.option("--timezone", default="", help="IANA time zone of the --cron schedules (UTC).")
@click.option(
    "--interval",
    "intervals",
    multiple=True,
    type=int,
    metavar="SECONDS",
    help="Interval (repeatable).",
)
@click.option("--concurrency-limit", type=int, default=0, show_default=True, help="0: none.")
@click.option(
    "--collision-strategy",
    type=click.Choice(["enqueue", "cancel-new"]),
    default=None,
    help="What a run does when the deployment is at its concurrency limit [default: enqueue].",
)
@click.pass_obj
def deploy(session: Session, /, entrypoint: str | None, **options: Any) -> None:
    """Create or update deployments, printing what changed.

    With no ENTRYPOINT, applies every deployment of ./flowyard.yaml (or --file, or just
    --name). With ENTRYPOINT (path/to/file.py:fn or pkg.module:fn), deploys that one flow
    from the flags. The parameter schema is derived from the function's signature without
    running it.
    """
    from control_plane.cli.deploying import apply_deployment
    from control_plane.cli.project import DEFAULT_FILE, load_project, with_schema

    if entrypoint is None:
        flags = [flag for name, flag in _ENTRYPOINT_ONLY.items() if options[name]]
        if flags or options["source"] != Path("."):
            shown = ", ".join(flags) or "--source"
            raise click.UsageError(
                f"{shown}: only with ENTRYPOINT; a project file declares these per deployment"
            )
        declared = load_project(options["project_file"] or Path(DEFAULT_FILE), options["name"])
    else:
        declared = [flag_deployment(entrypoint, options)]
    for item in declared:
        deployment, note = with_schema(item)
        applied = apply_deployment(session.stub, deployment)
        for line in applied.lines():
            output.console.print(line)
        if note:
            output.console.print(f"  ({note})")


#: Options that describe one deployment: with a project file, the file says these.
_ENTRYPOINT_ONLY = {
    "pool_name": "--pool",
    "git_url": "--git-url",
    "git_ref": "--git-ref",
    "git_subdir": "--git-subdir",
    "shallow": "--shallow",
    "git_token_env": "--git-token-env",
    "git_token_secret": "--git-token-secret",
    "archive_url": "--archive-url",
    "sha256": "--sha256",
    "params": "--param",
    "job_variables": "--job-variable",
    "tags": "--tag",
    "description": "--description",
    "queue": "--queue",
    "retries": "--retries",
    "retry_delay": "--retry-delay",
    "crons": "--cron",
    "timezone": "--timezone",
    "intervals": "--interval",
    "concurrency_limit": "--concurrency-limit",
    "collision_strategy": "--collision-strategy",
}


def flag_deployment(entrypoint: str, options: dict[str, Any]) -> Any:
    """The deployment the ``deploy`` flags describe (see :func:`deploy`)."""
    from control_plane.cli.project import Declared

    if options["project_file"] is not None:
        raise click.UsageError("give either ENTRYPOINT with flags or --file, not both")
    for required in ("name", "pool_name"):
        if not options[required]:
            flag = "--" + required.removesuffix("_name")
            raise click.UsageError(f"{flag} is required when deploying ENTRYPOINT")
    if options["git_url"] and options["archive_url"]:
        raise click.UsageError("give either --git-url or --archive-url, not both")
    local = options["source"].resolve()
    if options["git_url"]:
        credentials = types_pb2.GitCredentials(token_env=options["git_token_env"])
        if options["git_token_secret"]:
            secret, sep, key = options["git_token_secret"].partition(":")
            if not sep or not secret or not key:
                raise click.BadParameter("use NAME:KEY", param_hint="--git-token-secret")
            credentials.token_secret.CopyFrom(types_pb2.SecretKeyRef(name=secret, key=key))
        git = types_pb2.GitSource(
            url=options["git_url"],
            ref=options["git_ref"],
            subdirectory=options["git_subdir"],
            shallow=options["shallow"],
        )
        if credentials.token_env or credentials.HasField("token_secret"):
            git.credentials.CopyFrom(credentials)
        source = types_pb2.Source(git=git)
        code = local / options["git_subdir"] if options["git_subdir"] else local
    elif options["archive_url"]:
        source = types_pb2.Source(
            archive=types_pb2.ArchiveSource(url=options["archive_url"], sha256=options["sha256"])
        )
        code = local
    else:
        source = types_pb2.Source(local=types_pb2.LocalSource(path=str(local)))
        code = local
    deployment = types_pb2.Deployment(
        name=options["name"],
        entrypoint=entrypoint,
        source=source,
        pool=options["pool_name"],
        parameters_json=json.dumps(parse_assignments(options["params"], "--param")),
        job_variables_json=json.dumps(
            parse_assignments(options["job_variables"], "--job-variable")
        ),
        tags=list(options["tags"]),
        description=options["description"],
    )
    apply_deploy_options(
        deployment,
        queue=options["queue"] or "default",
        retries=options["retries"],
        retry_delay=options["retry_delay"],
        crons=options["crons"],
        timezone=options["timezone"],
        intervals=options["intervals"],
        concurrency_limit=options["concurrency_limit"],
        collision_strategy=options["collision_strategy"] or "enqueue",
    )
    return Declared(deployment, code)


def build_deployment(
    entrypoint: str,
    *,
    name: str,
    pool: str,
    source: Path,
    parameters: dict[str, Any],
    job_variables: dict[str, Any] | None = None,
    tags: tuple[str, ...] = (),
    description: str = "",
) -> types_pb2.Deployment:
    """A Deployment message for local code, with the parameter schema derived from it."""
    from engine.errors import EngineError
    from engine.schema import parameter_schema

    source = source.resolve()
    try:
        schema = parameter_schema(source, entrypoint)
    except (EngineError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return types_pb2.Deployment(
        name=name,
        entrypoint=entrypoint,
        source=types_pb2.Source(local=types_pb2.LocalSource(path=str(source))),
        pool=pool,
        parameters_json=json.dumps(parameters),
        parameter_schema_json=json.dumps(schema),
        job_variables_json=json.dumps(job_variables or {}),
        tags=list(tags),
        description=description,
    )


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
