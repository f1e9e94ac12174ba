"""``flowyard pool``: work pools, their switches (limit, pause) and their queues."""

from __future__ import annotations

import json
from typing import Any

import click

from control_plane.cli import documents, output
from control_plane.cli.session import Session
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2


@click.group()
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
@output.format_option
@click.pass_obj
def pool_ls(session: Session, fmt: str) -> None:
    """List work pools."""
    response = session.stub.ListPools(pb.ListPoolsRequest())
    if fmt != "table":
        output.print_document({"pools": [documents.pool(p) for p in response.pools]}, fmt)
        return
    output.print_table(
        [output.Column(c) for c in ("NAME", "TYPE", "CONCURRENCY", "AGENTS", "PAUSED")],
        (
            (
                p.name,
                types_pb2.PoolType.Name(p.type).removeprefix("POOL_TYPE_").lower(),
                str(p.concurrency_limit or "unlimited"),
                str(p.connected_agents),
                "yes" if p.paused else "no",
            )
            for p in response.pools
        ),
    )


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


@pool.command("set")
@click.argument("name")
@click.option("--concurrency-limit", type=int, help="Runs in PENDING/RUNNING at once (0: none).")
@click.option("--pause/--resume", "paused", default=None, help="Stop or restart dispatching.")
@click.pass_obj
def pool_set(
    session: Session, name: str, concurrency_limit: int | None, paused: bool | None
) -> None:
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


@pool.group("queue")
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
    session: Session, pool_name: str, name: str, priority: int, concurrency_limit: int, paused: bool
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
@output.format_option
@click.pass_obj
def queue_ls(session: Session, pool_name: str, fmt: str) -> None:
    """List a pool's queues in dispatch order."""
    pool = session.stub.GetPool(pb.GetPoolRequest(name=pool_name)).pool
    if fmt != "table":
        document = {"pool": pool.name, "queues": [documents.queue(q) for q in pool.queues]}
        output.print_document(document, fmt)
        return
    output.print_table(
        [output.Column(c) for c in ("NAME", "PRIORITY", "CONCURRENCY", "PAUSED")],
        (
            (
                q.name,
                str(q.priority),
                str(q.concurrency_limit or "unlimited"),
                "yes" if q.paused else "no",
            )
            for q in pool.queues
        ),
    )
