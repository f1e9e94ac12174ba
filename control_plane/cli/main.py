"""The ``flowyard`` command: the control plane server and the user CLI.

Every command talks to the control plane over gRPC (``--server`` / ``FLOWYARD_SERVER``). A
server error is printed as one line (``error: <what the server said> (<STATUS>)``) with exit
code 1; a run that ends other than COMPLETED under ``--watch`` exits 1 too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc
from rich.table import Table

from control_plane.cli import output, scheduling
from control_plane.cli.client import Client, default_server, describe, resolve_token
from control_plane.cli.tokens import token_group
from control_plane.config import (
    DEFAULT_AGENT_PORT,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
    DEFAULT_PORT,
    ServerConfig,
)
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

F = TypeVar("F", bound=Callable[..., Any])
#: Upper bound of the server's timing flags (ten years): larger values overflow date arithmetic.
MAX_INTERVAL_SECONDS = 10 * 365 * 86400.0


def _parse_assignments(values: tuple[str, ...], option: str) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON is taken as JSON (3, true, [1]), else text."""
    result: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result


class Session:
    """Per-invocation state: the server address, credentials and a lazily made client."""

    def __init__(self, server: str, token: str | None = None, tls_ca: Path | None = None) -> None:
        self.server = server
        self.token = token
        self.tls_ca = tls_ca
        self._client: Client | None = None

    @property
    def stub(self) -> Any:
        """The ControlPlaneService stub."""
        if self._client is None:
            self._client = Client.connect(self.server, resolve_token(self.token), self.tls_ca)
        return self._client.stub


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    default=default_server,
    show_default=f"$FLOWYARD_SERVER or 127.0.0.1:{DEFAULT_PORT}",
    help="Control plane address (host:port).",
)
@click.option(
    "--token",
    envvar="FLOWYARD_TOKEN",
    help="Token for the control plane [default: $FLOWYARD_TOKEN, else the admin token "
    "file of the local server's data directory].",
)
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="FLOWYARD_TLS_CA",
    help="CA certificate (PEM) of the server's TLS certificate; turns TLS on.",
)
@click.pass_context
def cli(ctx: click.Context, server: str, token: str | None, tls_ca: Path | None) -> None:
    """Flowyard: run Python flows on Kubernetes or as local processes."""
    ctx.obj = Session(server, token, tls_ca)


# ----------------------------------------------------------------------------- server


@cli.group()
def server() -> None:
    """Run the control plane."""


@server.command("start")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port (0: any free port)."
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="FLOWYARD_DATA_DIR",
    help="Where the SQLite database lives (default ~/.flowyard).",
)
@click.option(
    "--db-url",
    envvar="FLOWYARD_DB_URL",
    help="SQLAlchemy URL of the database instead of SQLite in --data-dir.",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write host:port here once serving.",
)
@click.option(
    "--lease-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="How long an assignment may go unaccepted before it is re-queued.",
)
@click.option(
    "--max-concurrent-calls",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONCURRENT_CALLS,
    show_default=True,
    envvar="FLOWYARD_MAX_CONCURRENT_CALLS",
    help="User calls worked on at once; more are refused (RESOURCE_EXHAUSTED) with a retry hint.",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
    show_default=True,
    envvar="FLOWYARD_MAX_MESSAGE_BYTES",
    help="Largest request accepted; larger ones get RESOURCE_EXHAUSTED.",
)
@click.option(
    "--engine-grace-seconds",
    type=click.FloatRange(min=0.1, max=MAX_INTERVAL_SECONDS),
    default=60.0,
    show_default=True,
    help="A RUNNING run whose engine is silent this long is CRASHED.",
)
@click.option(
    "--agent-grace-seconds",
    type=click.FloatRange(min=0.1, max=MAX_INTERVAL_SECONDS),
    default=300.0,
    show_default=True,
    help="A submitted PENDING run whose agent is gone this long, its engine silent, is CRASHED.",
)
@click.option(
    "--late-after-seconds",
    type=click.FloatRange(min=0.1, max=MAX_INTERVAL_SECONDS),
    default=15.0,
    show_default=True,
    help="A run not dispatched this long after it was due is marked Late.",
)
@click.option(
    "--cancelling-timeout-seconds",
    type=click.FloatRange(min=0.1, max=MAX_INTERVAL_SECONDS),
    default=300.0,
    show_default=True,
    help="A run CANCELLING this long is forced to CANCELLED.",
)
@click.option(
    "--heartbeat-seconds",
    type=click.FloatRange(min=0.1, max=60.0),
    default=10.0,
    show_default=True,
    help="How often agents and engines are told to heartbeat. An agent treats a server "
    "silent for 3 beats as gone and reconnects.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="FLOWYARD_TLS_CERT",
    help="Server certificate (PEM); with --tls-key the server speaks TLS only.",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="FLOWYARD_TLS_KEY",
    help="Key (PEM) of --tls-cert.",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CA of agents' client certificates: opens the mutual-TLS agent port.",
)
@click.option(
    "--agent-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_AGENT_PORT,
    show_default=True,
    help="The mutual-TLS agent port (with --tls-client-ca; 0: any free port).",
)
@click.option(
    "--require-agent-cert",
    is_flag=True,
    help="Agents must connect with a verified client certificate (the agent port).",
)
@click.option("--log-level", default="INFO", show_default=True, envvar="FLOWYARD_LOG_LEVEL")
def server_start(
    host: str,
    port: int,
    data_dir: Path | None,
    db_url: str | None,
    ready_file: Path | None,
    lease_seconds: float,
    max_concurrent_calls: int,
    max_message_bytes: int,
    engine_grace_seconds: float,
    agent_grace_seconds: float,
    late_after_seconds: float,
    cancelling_timeout_seconds: float,
    heartbeat_seconds: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    agent_port: int,
    require_agent_cert: bool,
    log_level: str,
) -> None:
    """Start the control plane (gRPC) and serve until SIGTERM/SIGINT.

    On first start it creates an admin token in the data directory (admin.token, mode 0600),
    which the CLI on this machine reads by itself.
    """
    from control_plane.server import serve

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    config = ServerConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        db_url=db_url,
        ready_file=ready_file,
        lease_seconds=lease_seconds,
        max_concurrent_calls=max_concurrent_calls,
        max_receive_message_bytes=max_message_bytes,
        engine_grace_seconds=engine_grace_seconds,
        agent_grace_seconds=agent_grace_seconds,
        late_after_seconds=late_after_seconds,
        cancelling_timeout_seconds=cancelling_timeout_seconds,
        agent_heartbeat_seconds=heartbeat_seconds,
        engine_heartbeat_seconds=heartbeat_seconds,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        agent_port=agent_port,
        require_agent_cert=require_agent_cert,
    )
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    if require_agent_cert and tls_client_ca is None:
        raise click.UsageError("--require-agent-cert needs --tls-client-ca")
    asyncio.run(serve(config))


# ----------------------------------------------------------------------------- pools


@cli.group()
def pool() -> None:
    """Manage work pools."""


@pool.command("create")
@click.argument("name")
@click.option(
    "--type",
    "pool_type",
    type=click.Choice(["process", "kubernetes"]),
    default="process",
    show_default=True,
)
@click.option(
    "--concurrency-limit", type=int, default=0, show_default=True, help="0 means unlimited."
)
@click.option("--template", type=click.File(), help="Base job template JSON file.")
@click.pass_obj
def pool_create(
    session: Session, name: str, pool_type: str, concurrency_limit: int, template: Any
) -> None:
    """Create a work pool."""
    response = session.stub.CreatePool(
        pb.CreatePoolRequest(
            name=name,
            type=types_pb2.PoolType.Value(f"POOL_TYPE_{pool_type.upper()}"),
            base_job_template_json=template.read() if template else "",
            concurrency_limit=concurrency_limit,
        )
    )
    output.console.print(f"Created {pool_type} pool {response.pool.name!r}")


@pool.command("ls")
@click.pass_obj
def pool_ls(session: Session) -> None:
    """List work pools."""
    response = session.stub.ListPools(pb.ListPoolsRequest())
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "TYPE", "CONCURRENCY", "AGENTS", "PAUSED"):
        table.add_column(column)
    for p in response.pools:
        table.add_row(
            p.name,
            types_pb2.PoolType.Name(p.type).removeprefix("POOL_TYPE_").lower(),
            str(p.concurrency_limit or "unlimited"),
            str(p.connected_agents),
            "yes" if p.paused else "no",
        )
    output.console.print(table)


@pool.command("template")
@click.option(
    "--type",
    "pool_type",
    type=click.Choice(["process", "kubernetes"]),
    default="kubernetes",
    show_default=True,
)
def pool_template(pool_type: str) -> None:
    """Print the default base job template of a pool type (JSON), to start a custom one from."""
    from control_plane.models import PoolType
    from control_plane.orchestration.templates import default_template

    output.console.print_json(json.dumps(default_template(PoolType(pool_type))))


# ----------------------------------------------------------------------------- deployments


@cli.command()
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
        parameters_json=json.dumps(_parse_assignments(options["params"], "--param")),
        job_variables_json=json.dumps(
            _parse_assignments(options["job_variables"], "--job-variable")
        ),
        tags=list(options["tags"]),
        description=options["description"],
    )
    scheduling.apply_deploy_options(
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


@cli.group()
def deployment() -> None:
    """Inspect deployments."""


@deployment.command("ls")
@click.option("--pool", "pool_name", default="", help="Only this pool's deployments.")
@click.pass_obj
def deployment_ls(session: Session, pool_name: str) -> None:
    """List deployments."""
    response = session.stub.ListDeployments(pb.ListDeploymentsRequest(pool=pool_name))
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ENTRYPOINT", "POOL", "SOURCE"):
        table.add_column(column)
    for d in response.deployments:
        table.add_row(d.name, d.entrypoint, d.pool, d.source.local.path)
    output.console.print(table)


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
    """Dry run: print the infrastructure a run of NAME would get (a Kubernetes Job manifest).

    Nothing is created. The engine token never appears: it reaches the container through a
    per-run Secret.
    """
    response = session.stub.RenderDeployment(
        pb.RenderDeploymentRequest(
            deployment_name=name,
            job_variables_json=json.dumps(_parse_assignments(job_variables, "--job-variable")),
        )
    )
    manifest = json.loads(response.manifest_json)
    if fmt == "json":
        output.console.print_json(json.dumps(manifest))
    else:
        import yaml

        click.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)


scheduling.register(pool, deployment)


@cli.group("agent")
def agent_group() -> None:
    """Install agents."""


@agent_group.command("install")
@click.option("--pool", "pool_name", required=True, help="Work pool the agent serves.")
@click.option(
    "--namespace",
    default="flowyard",
    show_default=True,
    help="Namespace of the agent and its Jobs.",
)
@click.option("--image", required=True, help="Agent image (built from Dockerfile.agent).")
@click.option(
    "--server",
    "server_address",
    required=True,
    help="Control plane address as seen from the cluster (host:port).",
)
@click.option(
    "--name",
    default="flowyard-agent",
    show_default=True,
    help="Name of the agent's Kubernetes objects.",
)
@click.option(
    "--capacity",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Runs the agent holds at once.",
)
@click.option(
    "--token",
    "agent_token",
    default="",
    envvar="FLOWYARD_AGENT_TOKEN",
    help="Agent token ('flowyard token create --agent --pool P'), put in the agent's Secret.",
)
@click.option(
    "--token-secret",
    default="",
    help="Instead of --token: an existing Secret (key 'token') the agent reads its token from.",
)
def agent_install(
    pool_name: str,
    namespace: str,
    image: str,
    server_address: str,
    name: str,
    capacity: int,
    agent_token: str,
    token_secret: str,
) -> None:
    """Print the manifests that install an agent in a cluster: pipe them to `kubectl apply -f -`.

    The agent reads its token from a Secret, never from a literal in its Deployment.
    """
    from agent.kubernetes.install import install_manifests, to_yaml

    try:
        manifests = install_manifests(
            pool=pool_name,
            namespace=namespace,
            image=image,
            server=server_address,
            agent_token=agent_token,
            name=name,
            capacity=capacity,
            token_secret=token_secret,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    click.echo(to_yaml(manifests), nl=False)


cli.add_command(token_group)

# ----------------------------------------------------------------------------- runs


@cli.command("run")
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
            parameters_json=json.dumps(_parse_assignments(params, "--param")),
            job_variables_json=json.dumps(_parse_assignments(job_variables, "--job-variable")),
            idempotency_key=idempotency_key,
        )
    )
    run = response.run
    note = "" if response.created else " (existing run for this idempotency key)"
    output.errors.print(f"Created run {run.id} of {deployment_name!r}{note}")
    if not watch:
        output.console.print(run.id)
        return
    final = follow_logs(session.stub, run.id, follow=True, headers=run.max_retries > 0)
    finish(final)


def follow_logs(
    stub: Any, run_id: str, follow: bool, show_attempt: bool = False, headers: bool = False
) -> types_pb2.RunState:
    """Print a run's logs (history, then live lines with ``follow``); return the last state seen.

    With ``headers`` (runs that may have several attempts), a line ``=== attempt N ===`` comes
    before each attempt's lines. If the stream breaks, it reconnects from the last line
    printed: nothing is missed or printed twice.
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
                for line in message.lines:
                    if headers and line.attempt != shown_attempt:
                        # One header per attempt, so a retried run's attempts stand apart.
                        shown_attempt = line.attempt
                        output.console.print(f"=== attempt {line.attempt} ===", style="bold")
                    output.print_lines([line], show_attempt)
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
        first = state.message.strip().splitlines()[0] if state.message.strip() else ""
        output.console.print(text, f"- {first}")
    else:
        output.console.print(text)
    if state.type != types_pb2.STATE_TYPE_COMPLETED:
        sys.exit(1)


@cli.group()
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
@click.pass_obj
def runs_ls(session: Session, deployment_name: str, states: tuple[str, ...], limit: int) -> None:
    """List runs, newest first."""
    response = session.stub.ListRuns(
        pb.ListRunsRequest(
            deployment_name=deployment_name,
            state_types=[types_pb2.StateType.Value(f"STATE_TYPE_{s.upper()}") for s in states],
            page_size=limit,
        )
    )
    output.console.print(output.runs_table(response.runs))


@runs.command("show")
@click.argument("run_id", metavar="RUN")
@click.pass_obj
def runs_show(session: Session, run_id: str) -> None:
    """Show a run and its state history."""
    response = session.stub.GetRun(pb.GetRunRequest(run_id=run_id))
    run = response.run
    fields = [
        ("Run", run.id),
        ("Deployment", run.deployment_name),
        ("Flow", run.flow_name),
        ("Pool", run.pool),
        ("State", output.state_text(run.state)),
        ("Attempt", f"{run.attempt} of {run.max_retries + 1}"),
        ("Queue", run.queue or "-"),
        ("Schedule", run.schedule_name or "-"),
        ("Parameters", run.parameters_json),
        ("Agent", run.agent_name or "-"),
        ("Infrastructure", run.infrastructure_id or "-"),
        ("Result", run.result_summary or "-"),
        ("Source revision", run.source_revision or "-"),
    ]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in fields:
        table.add_row(label, value)
    output.console.print(table)
    history = Table(box=None, pad_edge=False, title="History", title_justify="left")
    for column in ("TIME", "ATTEMPT", "STATE", "MESSAGE"):
        history.add_column(column)
    for state in response.history:
        first = state.message.strip().splitlines()[0] if state.message.strip() else ""
        history.add_row(
            state.timestamp.ToDatetime().strftime("%H:%M:%S.%f")[:-3],
            str(state.attempt),
            output.state_text(state),
            first,
        )
    output.console.print(history)
    output.console.print(scheduling.attempts_table(response.history))


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.pass_obj
def logs(session: Session, run_id: str, follow: bool) -> None:
    """Print a run's logs (a header line per attempt for runs that may be retried)."""
    run = session.stub.GetRun(pb.GetRunRequest(run_id=run_id)).run
    follow_logs(session.stub, run_id, follow=follow, headers=run.max_retries > 0 or run.attempt > 1)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", default="", help="Why; stored with the state.")
@click.pass_obj
def cancel(session: Session, run_id: str, reason: str) -> None:
    """Cancel a run."""
    response = session.stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason=reason))
    output.console.print(f"Run {run_id}:", output.state_text(response.run.state))


@cli.command()
@click.option("--name", default="world", show_default=True, help="Who the demo flow greets.")
def demo(name: str) -> None:
    """Run a flow end to end on a throw-away local control plane and process agent."""
    from control_plane.cli.demo import run_demo

    sys.exit(run_demo(name))


def main() -> None:
    """Entry point of the ``flowyard`` console script."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except grpc.RpcError as error:
        address = _last_address()
        output.errors.print(f"error: {describe(error, address)}")
        sys.exit(1)


def _last_address() -> str:
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == "--server" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--server="):
            return arg.split("=", 1)[1]
    return default_server()


if __name__ == "__main__":
    main()
