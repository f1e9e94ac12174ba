"""The ``flowyard`` command: the control plane server and the user CLI.

Every command talks to the control plane over gRPC (``--server`` / ``FLOWYARD_SERVER``). A
server error is printed as one line (``error: <what the server said> (<STATUS>)``) with exit
code 1, a usage error as click's usage line and ``error: <what is wrong>`` with exit code 2; a
run that ends other than COMPLETED under ``--watch`` or ``logs --follow`` exits 1 too, and
Ctrl-C exits 130.

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
    help="Control plane address (host:port), or several separated by commas (replicas).",
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
        show_error(exc)
        sys.exit(exc.exit_code)
    except grpc.RpcError as error:
        output.error(describe(error, _last_address()))
        sys.exit(1)


#: click >= 8.2 shows a group's help, not an error, when it is called without a command.
_HELP_INSTEAD = getattr(click.exceptions, "NoArgsIsHelpError", ())


def show_error(exc: click.ClickException) -> None:
    """An error of click's (bad usage) or ours, in the CLI's one form: ``error: <message>``.

    A usage error keeps click's usage line and help hint above it; only click's own
    ``Error:`` prefix differs from ours, and scripts matching one prefix see every error.
    """
    if isinstance(exc, _HELP_INSTEAD):
        exc.show()
        return
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        ctx = exc.ctx
        help_names = ctx.command.get_help_option_names(ctx)
        hint = (
            f"Try '{ctx.command_path} {max(help_names, key=len)}' for help.\n" if help_names else ""
        )
        click.echo(f"{ctx.get_usage()}\n{hint}", err=True)
    output.error(exc.format_message())


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
