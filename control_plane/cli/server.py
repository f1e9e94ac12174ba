"""``flowyard server start``: the control plane's flags, checked and turned into a ServerConfig;
``flowyard server install``: the manifests that run it in a cluster (``cli.install``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from control_plane.config import (
    DEFAULT_AGENT_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
    DEFAULT_PORT,
    ServerConfig,
)

#: Upper bound of the server's timing flags (ten years): larger values overflow date arithmetic.
MAX_INTERVAL_SECONDS = 10 * 365 * 86400.0


@click.group()
def server() -> None:
    """Run the control plane, or print the manifests that run it in a cluster."""


@server.command("start")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port (0: any free port)."
)
@click.option(
    "--http-port",
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    envvar="FLOWYARD_HTTP_PORT",
    help="HTTP port of the web UI, its JSON API, /healthz, /readyz and /metrics (0: any free "
    "port).",
)
@click.option(
    "--no-http", is_flag=True, help="Serve no HTTP at all: gRPC only (no web UI, no /metrics)."
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
    help="Write host:port here once serving (then the agent port and the HTTP address, if "
    "any, one per line).",
)
@click.option(
    "--lease-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="How long an assignment may go unconfirmed before it is handed back (queued again "
    "as the run's next attempt).",
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
@click.option(
    "--admin-token",
    default="",
    envvar="FLOWYARD_ADMIN_TOKEN",
    help="The first admin token (better given as FLOWYARD_ADMIN_TOKEN, e.g. from a Kubernetes "
    "Secret): registered while the database holds no admin token, instead of writing a new "
    "one to the data directory's admin.token.",
)
@click.option("--log-level", default="INFO", show_default=True, envvar="FLOWYARD_LOG_LEVEL")
def server_start(
    host: str,
    port: int,
    http_port: int,
    no_http: bool,
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
    admin_token: str,
    log_level: str,
) -> None:
    """Start the control plane (gRPC) and serve until SIGTERM/SIGINT.

    On first start it creates an admin token in the data directory (admin.token, mode 0600),
    which the CLI on this machine reads by itself; or, with FLOWYARD_ADMIN_TOKEN, it registers
    that one and writes no file.
    """
    from control_plane.orchestration import tokens
    from control_plane.server import serve

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    config = ServerConfig(
        host=host,
        port=port,
        http_port=None if no_http else http_port,
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
        admin_token=admin_token.strip(),
    )
    if admin_token and not tokens.well_formed(admin_token.strip()):
        # The token itself is never echoed.
        raise click.UsageError(
            f"--admin-token (FLOWYARD_ADMIN_TOKEN) must read {tokens.GIVEN_SHAPE}"
        )
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    if require_agent_cert and tls_client_ca is None:
        raise click.UsageError("--require-agent-cert needs --tls-client-ca")
    from control_plane.server import RootTaskFailed
    from control_plane.store.migrate import StoreError

    try:
        asyncio.run(serve(config))
    except StoreError as exc:
        # Missing driver, unreachable server, unknown schema: one line saying what to do.
        raise click.ClickException(str(exc)) from None
    except RootTaskFailed as exc:
        # Logged above with its traceback; this is the one line that says why it stopped.
        raise click.ClickException(f"the control plane stopped: {exc}") from None


@server.command("install")
@click.option(
    "--namespace",
    default="flowyard",
    show_default=True,
    help="Namespace of the control plane.",
)
@click.option("--image", required=True, help="Control-plane image (built from the Dockerfile).")
@click.option(
    "--name",
    default="flowyard",
    show_default=True,
    help="Name of the Kubernetes objects; pods in the cluster reach the control plane at "
    "NAME.NAMESPACE:PORT.",
)
@click.option(
    "--replicas",
    type=click.IntRange(1, 100),
    default=2,
    show_default=True,
    help="Control planes serving at once (more than one needs PostgreSQL).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of the server and its Service.",
)
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    help="HTTP port of the server and its Service: web UI, JSON API, probes, /metrics.",
)
@click.option(
    "--db-url",
    default="",
    help="Database URL (postgresql://user:password@host/dbname), put in the Secret the "
    "manifests create, with a new first admin token.",
)
@click.option(
    "--db-url-secret",
    default="",
    help="Instead of --db-url: an existing Secret with the database URL (key 'db-url') and, "
    "optionally, the first admin token (key 'admin-token'). Nothing secret is printed.",
)
@click.option(
    "--create-namespace/--no-create-namespace",
    default=True,
    show_default=True,
    help="Print the Namespace object first (leave it out when the namespace exists).",
)
def server_install(
    namespace: str,
    image: str,
    name: str,
    replicas: int,
    port: int,
    http_port: int,
    db_url: str,
    db_url_secret: str,
    create_namespace: bool,
) -> None:
    """Print the manifests that run the control plane in a cluster: pipe them to
    `kubectl apply -f -`.

    The pods read the database URL and the first admin token from a Secret, never from a
    literal in the Deployment. With --db-url, a new admin token is made for that Secret; the
    server registers it on first start.
    """
    from control_plane.cli import output
    from control_plane.cli.install import (
        ADMIN_TOKEN_KEY,
        DATA_DIR,
        install_manifests,
        is_sqlite,
    )
    from control_plane.orchestration import tokens
    from flowyard_common.manifests import to_yaml

    if db_url and db_url_secret:
        raise click.UsageError("give --db-url or --db-url-secret, not both")
    admin_token = tokens.mint()[0] if db_url else ""
    try:
        manifests = install_manifests(
            namespace=namespace,
            image=image,
            name=name,
            replicas=replicas,
            port=port,
            http_port=http_port,
            db_url=db_url,
            admin_token=admin_token,
            db_url_secret=db_url_secret,
            create_namespace=create_namespace,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    # On stderr: stdout is the manifests, piped to kubectl.
    if db_url and is_sqlite(db_url):
        output.errors.print(
            f"warning: a SQLite database lives in the pod ({DATA_DIR} is an emptyDir) and is "
            "lost with it: fine for a trial; use PostgreSQL to keep your state"
        )
    if admin_token:
        secret = next(m for m in manifests if m["kind"] == "Secret")["metadata"]["name"]
        output.errors.print(
            f"Made admin token {tokens.token_id(admin_token)} for the Secret below; the control "
            f"plane registers it on first start. Read it with: kubectl -n {namespace} get "
            f"secret {secret} -o jsonpath='{{.data.{ADMIN_TOKEN_KEY}}}' | base64 -d"
        )
    click.echo(to_yaml(manifests), nl=False)
