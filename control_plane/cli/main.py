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

from control_plane.cli import output
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
    late_after_seconds: float,
    cancelling_timeout_seconds: float,
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
        late_after_seconds=late_after_seconds,
        cancelling_timeout_seconds=cancelling_timeout_seconds,
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
@click.argument("entrypoint")
@click.option("--name", "-n", required=True, help="Deployment name.")
@click.option("--pool", "-p", "pool_name", required=True, help="Work pool that runs it.")
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=".",
    show_default=True,
    help="Directory holding the code; the entrypoint is relative to it.",
)
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
@click.pass_obj
def deploy(
    session: Session,
    entrypoint: str,
    name: str,
    pool_name: str,
    source: Path,
    params: tuple[str, ...],
    job_variables: tuple[str, ...],
    tags: tuple[str, ...],
    description: str,
) -> None:
    """Create or update a deployment of ENTRYPOINT (path/to/file.py:fn or pkg.module:fn).

    The flow's parameter schema is derived from the function's signature without running it.
    """
    deployment = build_deployment(
        entrypoint,
        name=name,
        pool=pool_name,
        source=source,
        parameters=_parse_assignments(params, "--param"),
        job_variables=_parse_assignments(job_variables, "--job-variable"),
        tags=tags,
        description=description,
    )
    response = session.stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
    verb = "Created" if response.created else "Updated"
    output.console.print(
        f"{verb} deployment {response.deployment.name!r} ({entrypoint} in pool {pool_name!r})"
    )


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
    final = follow_logs(session.stub, run.id, follow=True)
    finish(final)


def follow_logs(
    stub: Any, run_id: str, follow: bool, show_attempt: bool = False
) -> types_pb2.RunState:
    """Print a run's logs (history, then live lines with ``follow``); return the last state seen.

    If the stream breaks, it reconnects from the last line printed: nothing is missed or
    printed twice.
    """
    attempt, seq = 0, 0
    state = types_pb2.RunState()
    failures = 0
    while True:
        try:
            for message in stub.TailLogs(
                pb.TailLogsRequest(
                    run_id=run_id, after_attempt=attempt, after_seq=seq, follow=follow
                )
            ):
                failures = 0
                output.print_lines(message.lines, show_attempt)
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
        ("Attempt", str(run.attempt)),
        ("Parameters", run.parameters_json),
        ("Agent", run.agent_name or "-"),
        ("Infrastructure", run.infrastructure_id or "-"),
        ("Result", run.result_summary or "-"),
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


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the run ends.")
@click.pass_obj
def logs(session: Session, run_id: str, follow: bool) -> None:
    """Print a run's logs."""
    follow_logs(session.stub, run_id, follow=follow)


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
