"""The ``flowyard`` command: the control plane server and the user CLI.

Every command talks to the control plane over gRPC (``--server`` / ``FLOWYARD_SERVER``). A
server error is printed as one line (``error: <what the server said> (<STATUS>)``) with exit
code 1; a run that ends other than COMPLETED under ``--watch`` exits 1 too.

This module builds the command group; each concept's commands live in their own module
(``server``, ``pools``, ``deploy``, ``deployments``, ``runs``, ``agents``, ``tokens``, ``demo``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import grpc

from control_plane.cli import agents, deploy, deployments, output, pools, runs, server
from control_plane.cli.client import default_server, describe
from control_plane.cli.demo import demo
from control_plane.cli.session import Session
from control_plane.cli.tokens import token_group
from control_plane.config import DEFAULT_PORT


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


for command in (
    server.server,
    pools.pool,
    deploy.deploy,
    deployments.deployment,
    agents.agent_group,
    token_group,
    runs.run_command,
    runs.runs,
    runs.logs,
    runs.cancel,
    demo,
):
    cli.add_command(command)


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
