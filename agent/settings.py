"""The agent's configuration: frozen dataclasses, read from flags and environment in one place.

:func:`parse_settings` is the only code that looks at ``argv`` and ``FLOWYARD_*`` variables;
everything else receives the dataclass it needs as an argument.
"""

from __future__ import annotations

import argparse
import re
import secrets
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flowyard_common import addresses

__all__ = [
    "DEFAULT_HEALTH_FILE",
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVER",
    "RUNTIMES",
    "AgentSettings",
    "ApiRetrySettings",
    "BackoffSettings",
    "ConnectionSettings",
    "HealthSettings",
    "HttpSettings",
    "KubernetesSettings",
    "Probe",
    "ProcessSettings",
    "Settings",
    "TLSSettings",
    "build_parser",
    "default_engine_command",
    "parse_command",
    "parse_settings",
]

DEFAULT_SERVER = "127.0.0.1:7700"
DEFAULT_CAPACITY = 4
#: Engines the process runtime keeps started ahead of their runs, unless told otherwise.
DEFAULT_WARM_ENGINES = 2
DEFAULT_NAMESPACE = "default"
DEFAULT_HEALTH_FILE = Path("/tmp/flowyard-agent.health")
#: Where ``/metrics`` and ``/healthz`` listen when a port is given: this machine only, unless
#: told otherwise (the Kubernetes install listens on every address of its pod).
DEFAULT_HTTP_HOST = "127.0.0.1"
RUNTIMES = ("process", "kubernetes")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# A Kubernetes namespace name: an RFC 1123 DNS label.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class BackoffSettings:
    """Reconnect delays in seconds: full jitter over ``min(cap, base * 2**failures)``."""

    base: float = 0.5
    cap: float = 30.0


@dataclass(frozen=True)
class TLSSettings:
    """TLS towards the control plane; all unset: plaintext."""

    # The CA that signed the control plane's certificate; set: the channel speaks TLS.
    ca: Path | None = None
    # A client certificate and its key, for a server that requires one (mutual TLS).
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the control plane is and how the agent keeps its stream healthy."""

    server: str = DEFAULT_SERVER
    # The agent (or admin) token sent as "authorization: Bearer"; never printed.
    token: str = field(default="", repr=False)
    tls: TLSSettings = field(default_factory=TLSSettings)
    backoff: BackoffSettings = field(default_factory=BackoffSettings)
    # HTTP/2 pings detect a half-open TCP connection even when neither side has data to send.
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    # How long to wait for Welcome after Hello before treating the attempt as failed.
    welcome_timeout: float = 30.0
    # Used when a Welcome does not carry a heartbeat interval.
    default_heartbeat_interval: float = 10.0
    # A server silent for this many heartbeat intervals is treated as gone.
    silent_intervals: int = 3


def new_instance_id(hostname: str | None = None) -> str:
    """An id for this agent process: its host (a pod's name, in Kubernetes) and a random part."""
    return f"{hostname or socket.gethostname()}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class AgentSettings:
    """Who the agent is and how much work it takes."""

    pool: str
    # The agent's identity in its pool: a new process of the same name takes over the runs
    # its predecessors held, so it must survive restarts and rollouts (not a pod's name).
    name: str
    capacity: int = DEFAULT_CAPACITY
    runtime: str = "process"
    # Pool queues to take runs from; empty means every queue of the pool.
    queues: tuple[str, ...] = ()
    # On SIGTERM: how long in-flight work (a submission, the last reports) may take to finish.
    shutdown_grace: float = 5.0
    # This process, unlike every other one using ``name``: the server lets the same instance
    # replace its stale session at once and refuses another instance while one is connected.
    instance_id: str = field(default_factory=new_instance_id)


@dataclass(frozen=True)
class ProcessSettings:
    """The process runtime: how engines are started and stopped on this machine."""

    engine_command: tuple[str, ...]
    # None: a fresh temporary directory is created when the runtime starts.
    work_dir: Path | None = None
    cancel_grace: float = 10.0
    log_tail_lines: int = 50
    # Engines started ahead of their runs (0: every run starts its own interpreter).
    warm_engines: int = 0
    # Engines forked from one warm interpreter (``agent.runtimes.forked``); takes precedence
    # over warm engines.
    fork_engines: bool = False


@dataclass(frozen=True)
class ApiRetrySettings:
    """Retries of one Kubernetes API call after 429, 5xx or a connection error."""

    # Tries in all, the first one included.
    attempts: int = 6
    backoff: BackoffSettings = field(default_factory=lambda: BackoffSettings(base=0.2, cap=5.0))
    # A longer Retry-After is cut short: callers have deadlines of their own.
    max_retry_after: float = 30.0


@dataclass(frozen=True)
class KubernetesSettings:
    """The Kubernetes runtime: which cluster, where Jobs go, how they are watched."""

    # A kubeconfig path (or several, joined like $KUBECONFIG); None: the in-cluster config.
    kubeconfig: str | None = None
    # Where Jobs go when their template names no namespace; always watched.
    namespace: str = DEFAULT_NAMESPACE
    # Other namespaces a deployment's `namespace` job variable may send Jobs to: watched from
    # the start, so that an agent that restarts finds its Jobs there even without the
    # cluster-wide Job list (a ClusterRole) that otherwise finds them.
    watch_namespaces: tuple[str, ...] = ()
    # What engines inside pods dial to reach the control plane.
    engine_server: str = DEFAULT_SERVER
    # The PEM of the CA engines trust for the control plane's TLS certificate (the agent's
    # --tls-ca), handed to them through each attempt's Secret; None: plaintext.
    engine_tls_ca: str | None = None
    retry: ApiRetrySettings = field(default_factory=ApiRetrySettings)
    # Server-side timeout of one watch request; the watch then resumes where it was.
    watch_timeout: float = 300.0
    # Delays between failed list/watch requests.
    watch_backoff: BackoffSettings = field(default_factory=BackoffSettings)
    # The first list of Jobs and pods must succeed within this, or the agent exits.
    startup_timeout: float = 60.0
    # How long a cancel waits for the deleted Job to disappear.
    cancel_timeout: float = 60.0
    # Pod-start deadline of an adopted Job whose own annotation is missing.
    default_pod_start_timeout: float = 300.0
    # How long an image pull error that cannot heal (an image or tag that does not exist, a
    # name that does not parse) may last before the run ends, instead of the whole pod-start
    # timeout: long enough for an image pushed moments after the run was created.
    unpullable_image_grace: float = 30.0
    log_tail_lines: int = 50


@dataclass(frozen=True)
class HealthSettings:
    """The liveness file: touched on Welcome and on every server heartbeat."""

    file: Path = DEFAULT_HEALTH_FILE
    # ``--probe`` fails when the file is older than this.
    max_age: float = 90.0


@dataclass(frozen=True)
class HttpSettings:
    """The agent's own HTTP listener: ``/metrics`` and ``/healthz``."""

    host: str = DEFAULT_HTTP_HOST
    # 0: no listener (the default outside the Kubernetes install).
    port: int = 0


@dataclass(frozen=True)
class Settings:
    """Everything the agent needs, grouped by the part of the agent that uses it."""

    agent: AgentSettings
    connection: ConnectionSettings
    process: ProcessSettings
    log_level: str = "INFO"
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    http: HttpSettings = field(default_factory=HttpSettings)


@dataclass(frozen=True)
class Probe:
    """``--probe``: check the liveness file instead of running the agent."""

    health: HealthSettings


#: The ways the process runtime starts an engine (``--engine-start``).
ENGINE_STARTS = ("fork", "warm", "cold")


def default_engine_command(executable: str) -> tuple[str, ...]:
    """The engine beside this interpreter: its ``flowyard-engine`` script, else ``-m engine.main``."""
    script = Path(executable).parent / "flowyard-engine"
    if script.is_file():
        return (str(script),)
    return (executable, "-m", "engine.main")


def build_parser() -> argparse.ArgumentParser:
    """The ``flowyard-agent`` command line (defaults that come from the environment are None)."""
    parser = argparse.ArgumentParser(
        prog="flowyard-agent",
        description="Take runs of one Flowyard work pool and run them on this machine.",
    )
    parser.add_argument("--pool", help="work pool to serve (env FLOWYARD_POOL); required")
    parser.add_argument(
        "--queue",
        action="append",
        default=[],
        dest="queues",
        help="take runs only from this pool queue (repeatable; default: every queue)",
    )
    parser.add_argument(
        "--server",
        help="control plane address HOST:PORT, or several separated by commas for several "
        f"replicas (env FLOWYARD_SERVER, default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--token",
        help="agent token of the pool, from 'flowyard token create --agent' (env FLOWYARD_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca",
        help="CA certificate (PEM) that signed the control plane's certificate; turns TLS on "
        "and is handed to engines (env FLOWYARD_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        help="client certificate (PEM) for a control plane that requires one "
        "(env FLOWYARD_TLS_CERT)",
    )
    parser.add_argument("--tls-key", help="key (PEM) of --tls-cert (env FLOWYARD_TLS_KEY)")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="where runs execute (default: process)",
    )
    parser.add_argument(
        "--name",
        help="agent name: its identity in the pool, unique there and stable across restarts "
        "(env FLOWYARD_AGENT_NAME, default: host name)",
    )
    parser.add_argument(
        "--capacity",
        help=f"runs held at once (env FLOWYARD_AGENT_CAPACITY, default {DEFAULT_CAPACITY})",
    )
    parser.add_argument(
        "--work-dir",
        help="directory for per-run working directories and logs (default: a new temporary directory)",
    )
    parser.add_argument(
        "--engine-command",
        help="command that runs the engine, split like a shell would "
        "(default: flowyard-engine beside this Python)",
    )
    parser.add_argument(
        "--warm-engines",
        help="process runtime: engines kept started ahead of their runs, at most --capacity; "
        f"0 starts each run cold (env FLOWYARD_WARM_ENGINES, default {DEFAULT_WARM_ENGINES}, "
        "or 0 with --engine-command: a custom engine must understand 'standby')",
    )
    parser.add_argument(
        "--engine-start",
        choices=ENGINE_STARTS,
        help="process runtime: how an engine is started: 'fork' from one interpreter that has "
        "the engine imported, 'warm' from engines started ahead (--warm-engines), 'cold' as a "
        "new interpreter per run (env FLOWYARD_ENGINE_START; default fork, or cold with "
        "--engine-command: a custom engine must understand 'forkserver' or 'standby')",
    )
    parser.add_argument(
        "--cancel-grace-seconds",
        default="10",
        help="after SIGTERM, how long a cancelled engine may take before SIGKILL (default 10)",
    )
    parser.add_argument(
        "--kubeconfig",
        help="kubeconfig file for the kubernetes runtime (env KUBECONFIG; "
        "default: the in-cluster service account)",
    )
    parser.add_argument(
        "--namespace",
        help="namespace of Jobs whose template names none, always watched "
        f"(env FLOWYARD_NAMESPACE, default {DEFAULT_NAMESPACE})",
    )
    parser.add_argument(
        "--watch-namespace",
        action="append",
        metavar="NS",
        help="another namespace the pool's Jobs may be created in, watched from the start "
        "(repeatable; env FLOWYARD_WATCH_NAMESPACES, comma-separated)",
    )
    parser.add_argument(
        "--engine-server",
        help="control plane address HOST:PORT (or several, comma-separated) as engines reach "
        "it: from inside pods, or the "
        "main port when the agent uses the mutual-TLS agent port "
        "(env FLOWYARD_ENGINE_SERVER, default: --server)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="liveness check: exit 0 if the running agent heard from the control plane "
        "within 90 s (its health file, env FLOWYARD_AGENT_HEALTH_FILE), else 1",
    )
    parser.add_argument(
        "--http-port",
        help="serve /metrics and /healthz on this port (env FLOWYARD_AGENT_HTTP_PORT; "
        "default 0: no HTTP listener)",
    )
    parser.add_argument(
        "--http-host",
        help="address the HTTP listener binds (env FLOWYARD_AGENT_HTTP_HOST, default "
        f"{DEFAULT_HTTP_HOST}; 0.0.0.0 to be scraped from other hosts)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="agent log level (default INFO)",
    )
    return parser


def parse_command(
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    *,
    hostname: str | None = None,
    executable: str | None = None,
) -> Settings | Probe:
    """What the command line asks for: run the agent with :class:`Settings`, or a :class:`Probe`.

    Invalid input ends the program the argparse way: a usage message and exit status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.probe:
        return Probe(_health(environ))
    return _settings(parser, args, environ, hostname, executable)


def parse_settings(
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    *,
    hostname: str | None = None,
    executable: str | None = None,
) -> Settings:
    """Build :class:`Settings` from command-line arguments, falling back to ``environ``.

    Invalid input ends the program the argparse way: a usage message and exit status 2.
    """
    parser = build_parser()
    return _settings(parser, parser.parse_args(argv), environ, hostname, executable)


def _settings(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    hostname: str | None,
    executable: str | None,
) -> Settings:
    pool = (args.pool or environ.get("FLOWYARD_POOL", "")).strip()
    if not pool:
        parser.error("a pool is required: pass --pool or set FLOWYARD_POOL")

    server = (args.server or environ.get("FLOWYARD_SERVER") or DEFAULT_SERVER).strip()
    try:
        addresses.check(server)
    except addresses.AddressError as error:
        parser.error(f"--server: {error}; give HOST:PORT, or several separated by commas")

    name = (
        args.name or environ.get("FLOWYARD_AGENT_NAME") or hostname or socket.gethostname()
    ).strip()
    if not name:
        parser.error("the agent name must not be empty")

    if args.capacity is not None:
        capacity = _positive_int(parser, "--capacity", args.capacity)
    elif "FLOWYARD_AGENT_CAPACITY" in environ:
        capacity = _positive_int(
            parser, "FLOWYARD_AGENT_CAPACITY", environ["FLOWYARD_AGENT_CAPACITY"]
        )
    else:
        capacity = DEFAULT_CAPACITY

    cancel_grace = _non_negative_float(parser, "--cancel-grace-seconds", args.cancel_grace_seconds)

    if args.engine_command is not None:
        try:
            engine_command = tuple(shlex.split(args.engine_command))
        except ValueError as error:
            parser.error(f"--engine-command: {error}")
        if not engine_command:
            parser.error("--engine-command must not be empty")
    else:
        engine_command = default_engine_command(executable or sys.executable)

    warm_engines = _warm_engines(parser, args, environ, capacity)
    engine_start = _engine_start(parser, args, environ, warm_engines)
    if engine_start != "warm":
        warm_engines = 0
    work_dir = Path(args.work_dir).expanduser() if args.work_dir else None
    tls = _tls(parser, args, environ)

    return Settings(
        agent=AgentSettings(
            pool=pool,
            name=name,
            capacity=capacity,
            runtime=args.runtime,
            queues=tuple(q.strip() for q in args.queues if q.strip()),
            instance_id=new_instance_id(hostname),
        ),
        connection=ConnectionSettings(server=server, token=_token(args, environ, server), tls=tls),
        process=ProcessSettings(
            engine_command=engine_command,
            work_dir=work_dir,
            cancel_grace=cancel_grace,
            warm_engines=warm_engines,
            fork_engines=engine_start == "fork",
        ),
        log_level=args.log_level,
        kubernetes=_kubernetes(parser, args, environ, server, tls.ca),
        health=_health(environ),
        http=_http(parser, args, environ),
    )


def _kubernetes(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    server: str,
    tls_ca: Path | None = None,
) -> KubernetesSettings:
    kubeconfig = (args.kubeconfig or environ.get("KUBECONFIG") or "").strip() or None
    namespace = (args.namespace or environ.get("FLOWYARD_NAMESPACE") or DEFAULT_NAMESPACE).strip()
    if not _NAMESPACE.fullmatch(namespace):
        parser.error(f"--namespace must be a Kubernetes namespace name, got {namespace!r}")
    listed = args.watch_namespace or environ.get("FLOWYARD_WATCH_NAMESPACES", "").split(",")
    watch_namespaces = tuple(dict.fromkeys(n.strip() for n in listed if n.strip()))
    for name in watch_namespaces:
        if not _NAMESPACE.fullmatch(name):
            parser.error(f"--watch-namespace must be a Kubernetes namespace name, got {name!r}")
    engine_server = (args.engine_server or environ.get("FLOWYARD_ENGINE_SERVER") or server).strip()
    try:
        addresses.check(engine_server)
    except addresses.AddressError as error:
        parser.error(f"--engine-server: {error}; give HOST:PORT, or several separated by commas")
    try:
        engine_tls_ca = tls_ca.read_text() if tls_ca is not None else None
    except OSError as error:
        parser.error(f"--tls-ca {tls_ca}: {error.strerror or error}")
    return KubernetesSettings(
        kubeconfig=kubeconfig,
        namespace=namespace,
        watch_namespaces=tuple(n for n in watch_namespaces if n != namespace),
        engine_server=engine_server,
        engine_tls_ca=engine_tls_ca,
    )


#: Hosts whose control plane shares this machine (and its admin token file).
_LOOPBACK = ("127.", "localhost:", "[::1]:")


def _token(args: argparse.Namespace, environ: Mapping[str, str], server: str) -> str:
    """--token, $FLOWYARD_TOKEN, else a local server's admin token file.

    The file is read only for a server on this machine's loopback, so that an agent started
    beside ``flowyard server start`` needs no setup, and a local admin token is never sent
    anywhere else.
    """
    token = (args.token or environ.get("FLOWYARD_TOKEN") or "").strip()
    if token or not server.startswith(_LOOPBACK):
        return token
    data_dir = environ.get("FLOWYARD_DATA_DIR", "").strip()
    path = Path(data_dir) if data_dir else Path.home() / ".flowyard"
    try:
        return (path / "admin.token").read_text().strip()
    except OSError:
        return ""


def _tls(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> TLSSettings:
    def path(flag: str, env: str) -> Path | None:
        value = (getattr(args, flag) or environ.get(env) or "").strip()
        if not value:
            return None
        resolved = Path(value).expanduser()
        if not resolved.is_file():
            parser.error(f"--{flag.replace('_', '-')} {value}: no such file")
        return resolved

    tls = TLSSettings(
        ca=path("tls_ca", "FLOWYARD_TLS_CA"),
        cert=path("tls_cert", "FLOWYARD_TLS_CERT"),
        key=path("tls_key", "FLOWYARD_TLS_KEY"),
    )
    if (tls.cert is None) != (tls.key is None):
        parser.error("--tls-cert and --tls-key go together")
    if tls.cert is not None and tls.ca is None:
        parser.error("--tls-cert needs --tls-ca (the CA of the control plane's certificate)")
    return tls


def _health(environ: Mapping[str, str]) -> HealthSettings:
    path = environ.get("FLOWYARD_AGENT_HEALTH_FILE", "").strip()
    return HealthSettings(file=Path(path).expanduser() if path else DEFAULT_HEALTH_FILE)


def _http(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> HttpSettings:
    host = (args.http_host or environ.get("FLOWYARD_AGENT_HTTP_HOST") or DEFAULT_HTTP_HOST).strip()
    if args.http_port is not None:
        text, what = args.http_port, "--http-port"
    else:
        text, what = environ.get("FLOWYARD_AGENT_HTTP_PORT", "0"), "FLOWYARD_AGENT_HTTP_PORT"
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        parser.error(f"{what} must be a port number (0: no HTTP listener), got {text!r}")
    return HttpSettings(host=host, port=port)


def _engine_start(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    warm_engines: int,
) -> str:
    """How engines start: given, or implied by --warm-engines, or the default for the engine
    command."""
    if args.engine_start is not None:
        return str(args.engine_start)
    if "FLOWYARD_ENGINE_START" in environ:
        value = environ["FLOWYARD_ENGINE_START"]
        if value not in ENGINE_STARTS:
            parser.error(
                f"FLOWYARD_ENGINE_START must be one of {', '.join(ENGINE_STARTS)}, got {value!r}"
            )
        return value
    if args.warm_engines is not None or "FLOWYARD_WARM_ENGINES" in environ:
        return "warm" if warm_engines > 0 else "cold"
    return "cold" if args.engine_command is not None else "fork"


def _warm_engines(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    capacity: int,
) -> int:
    """How many engines to keep warm: given, or the default for the engine command; never
    more than the runs the agent holds at once."""
    if args.warm_engines is not None:
        text, what = args.warm_engines, "--warm-engines"
    elif "FLOWYARD_WARM_ENGINES" in environ:
        text, what = environ["FLOWYARD_WARM_ENGINES"], "FLOWYARD_WARM_ENGINES"
    elif args.engine_command is not None:
        return 0
    else:
        return min(DEFAULT_WARM_ENGINES, capacity)
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        parser.error(f"{what} must be 0 or a positive integer, got {text!r}")
    return min(value, capacity)


def _positive_int(parser: argparse.ArgumentParser, what: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        parser.error(f"{what} must be a positive integer, got {text!r}")
    if value < 1:
        parser.error(f"{what} must be a positive integer, got {text!r}")
    return value


def _non_negative_float(parser: argparse.ArgumentParser, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        parser.error(f"{what} must be a number of seconds, got {text!r}")
    if not 0 <= value < float("inf"):  # also rejects NaN
        parser.error(f"{what} must be a finite, non-negative number, got {text!r}")
    return value
