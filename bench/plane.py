"""What the gRPC-level benchmarks share: a throw-away control plane and figures to print.

``--store sqlite`` (the default) puts the server's database in a temporary directory;
``--store postgresql`` creates a database of its own on the server at ``--postgres`` and drops
it afterwards. ``--flowyard PATH`` starts another installation's ``flowyard`` instead of this
one's, so the same benchmark measures two versions of the server in one session (the client
side is always this checkout's). ``--replicas N`` (PostgreSQL) starts N control planes on the
one database; ``bench_planes`` gives a ``Plane`` for each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from control_plane.cli.deploy import build_deployment
from control_plane.cli.processes import Child, start_server
from flowyard.v1 import (
    agent_pb2_grpc,
    control_plane_pb2,
    control_plane_pb2_grpc,
    engine_pb2_grpc,
    types_pb2,
)

POOL = "bench"
DEPLOYMENT = "bench"
ADMIN_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Enough streams on one connection for every synthetic agent and engine of a benchmark.
CHANNEL_OPTIONS = [("grpc.max_concurrent_streams", 100_000)]


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every gRPC benchmark takes to choose the server it measures."""
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres", default=ADMIN_POSTGRES, help="a database on the server to create one from"
    )
    parser.add_argument(
        "--flowyard", default=None, help="the flowyard executable to start the server with"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="control planes on the one database (PostgreSQL)"
    )


@dataclass
class Plane:
    """A started control plane: where it listens, its admin token and async stubs."""

    address: str
    token: str
    #: The server's database, as a URL for a blocking SQLAlchemy engine.
    db_url: str
    channel: grpc.aio.Channel
    # The generated stubs are typed for blocking channels; on an aio channel they return
    # awaitables and streaming calls, which the stubs' types do not describe.
    control: Any
    agents: Any
    engines: Any
    #: The web UI's address, without the trailing slash: ``http://127.0.0.1:PORT``.
    http_url: str = ""
    #: The server's process id.
    pid: int = 0

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the server process has used so far."""
        return process_cpu_seconds(self.pid)

    @property
    def admin(self) -> tuple[tuple[str, str]]:
        """Call metadata that authenticates as the admin."""
        return (("authorization", f"Bearer {self.token}"),)

    async def agent_token(self, description: str) -> str:
        """A new agent token for pool ``bench``."""
        response = await self.control.CreateToken(
            control_plane_pb2.CreateTokenRequest(
                kind=control_plane_pb2.TOKEN_KIND_AGENT, pool=POOL, description=description
            ),
            metadata=self.admin,
        )
        return str(response.token)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database: its URL for the server, dropped afterwards."""
    name = f"flowyard_bench_{uuid.uuid4().hex[:12]}"
    conninfo = make_url(admin_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def server_processes(
    args: argparse.Namespace, extra_args: Sequence[str] = ()
) -> Iterator[tuple[list[Child], str]]:
    """``--replicas`` ``flowyard server start`` on the chosen store, and its database URL (for
    a blocking engine); stopped and removed afterwards. The first makes the admin token; the
    others are handed it."""
    replicas = getattr(args, "replicas", 1)
    if replicas > 1 and args.store != "postgresql":
        raise SystemExit("--replicas needs --store postgresql")
    root = Path(tempfile.mkdtemp(prefix="flowyard-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            db_url = None
            if args.store == "postgresql":
                db_url = stack.enter_context(postgres_database(args.postgres))
            servers: list[Child] = []
            for index in range(replicas):
                data_dir = root / f"server-{index}"
                if servers:
                    data_dir.mkdir()
                    shutil.copy(root / "server-0" / "admin.token", data_dir / "admin.token")
                server = start_server(
                    data_dir, db_url=db_url, extra_args=list(extra_args), executable=args.flowyard
                )
                stack.callback(server.stop)
                servers.append(server)
            yield servers, db_url or f"sqlite:///{root / 'server-0' / 'flowyard.db'}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def bench_planes(
    args: argparse.Namespace, extra_args: Sequence[str] = ()
) -> AsyncIterator[list[Plane]]:
    """A control plane per replica with pool ``bench`` and deployment ``bench`` (a flow never
    fetched)."""
    with server_processes(args, extra_args) as (servers, db_url):
        async with contextlib.AsyncExitStack() as stack:
            planes = []
            for server in servers:
                address, token = server.extra["address"], server.extra["token"]
                channel = await stack.enter_async_context(
                    grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                )
                planes.append(
                    Plane(
                        address,
                        token,
                        db_url,
                        channel,
                        control_plane_pb2_grpc.ControlPlaneServiceStub(channel),
                        agent_pb2_grpc.AgentServiceStub(channel),
                        engine_pb2_grpc.EngineServiceStub(channel),
                        server.extra.get("http_url", "").rstrip("/"),
                        server.pid,
                    )
                )
            plane = planes[0]
            await plane.control.CreatePool(
                control_plane_pb2.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_PROCESS),
                metadata=plane.admin,
            )
            source = Path(tempfile.mkdtemp(prefix="flowyard-bench-flow-"))
            try:
                (source / "flow.py").write_text("def bench() -> None:\n    return None\n")
                deployment = build_deployment(
                    "flow.py:bench", name=DEPLOYMENT, pool=POOL, source=source, parameters={}
                )
            finally:
                shutil.rmtree(source, ignore_errors=True)
            await plane.control.UpsertDeployment(
                control_plane_pb2.UpsertDeploymentRequest(deployment=deployment),
                metadata=plane.admin,
            )
            yield planes


@contextlib.asynccontextmanager
async def bench_plane(
    args: argparse.Namespace, extra_args: Sequence[str] = ()
) -> AsyncIterator[Plane]:
    """The first replica's plane of ``bench_planes`` (one, unless ``--replicas`` says more)."""
    async with bench_planes(args, extra_args) as planes:
        yield planes[0]


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from ``/proc`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime: fields 14 and 15 of the line, 12 and 13 after the command's name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of the sorted ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def print_latencies(rows: Sequence[tuple[str, Sequence[float]]]) -> None:
    """A table of p50, p99 and max, in milliseconds, of each row's seconds."""
    print(f"{'':<34}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name, seconds in rows:
        if not seconds:
            print(f"{name:<34}{0:>8}")
            continue
        p50, p99 = (percentile(seconds, f) * 1000 for f in (0.5, 0.99))
        print(f"{name:<34}{len(seconds):>8}{p50:>10.1f}{p99:>10.1f}{max(seconds) * 1000:>10.1f}")
