"""``flowyard token``: mint, list and revoke admin and agent tokens (admin only)."""

from __future__ import annotations

from typing import Any

import click

from control_plane.cli import documents, output
from flowyard.v1 import control_plane_pb2 as pb

#: Suffixes ``--ttl`` accepts, in seconds.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``90``, ``30m``, ``12h``, ``7d`` → seconds (0: never expires)."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], 0)
    number = value[:-1] if unit else value
    if not number.isdigit():
        raise click.BadParameter(
            f"{text!r} is not a duration: use seconds or a number with s, m, h or d (e.g. 30d)",
            param_hint="--ttl",
        )
    return int(number) * (unit or 1)


@click.group("token")
def token_group() -> None:
    """Manage admin and agent tokens (needs an admin token)."""


@token_group.command("create")
@click.option("--agent", "kind", flag_value="agent", help="An agent token for one pool.")
@click.option("--admin", "kind", flag_value="admin", help="An admin token.")
@click.option("--pool", "-p", default="", help="The pool an agent token may connect to.")
@click.option("--description", default="", help="Free-form description (who uses it).")
@click.option("--ttl", default="0", help="Lifetime: seconds or 30m, 12h, 7d; 0 never expires.")
@click.pass_obj
def token_create(session: Any, kind: str | None, pool: str, description: str, ttl: str) -> None:
    """Mint a token and print it once (it is stored only hashed)."""
    if kind is None:
        raise click.UsageError("say which kind: --agent --pool P, or --admin")
    if kind == "agent" and not pool:
        raise click.UsageError("an agent token needs --pool (the pool it serves)")
    if kind == "admin" and pool:
        raise click.UsageError("--pool is for agent tokens only")
    response = session.stub.CreateToken(
        pb.CreateTokenRequest(
            kind=pb.TOKEN_KIND_AGENT if kind == "agent" else pb.TOKEN_KIND_ADMIN,
            pool=pool,
            description=description,
            ttl_seconds=parse_ttl(ttl),
        )
    )
    # The token alone on stdout, for scripts; what it is on stderr.
    scope = f"agent token for pool {pool!r}" if kind == "agent" else "admin token"
    output.errors.print(f"Created {scope} {response.info.id} (shown once; store it now):")
    click.echo(response.token)


@token_group.command("ls")
@output.format_option
@click.pass_obj
def token_ls(session: Any, fmt: str) -> None:
    """List tokens (never their secrets)."""
    response = session.stub.ListTokens(pb.ListTokensRequest())
    if fmt != "table":
        output.print_document({"tokens": [documents.token(t) for t in response.tokens]}, fmt)
        return
    # The id is what `token revoke` takes: never cut it, whatever the terminal's width.
    columns = [output.Column("ID", whole=True), output.Column("KIND"), output.Column("POOL")]
    columns += [output.Column(c, whole=True) for c in ("CREATED", "EXPIRES")]
    columns += [output.Column("REVOKED"), output.Column("DESCRIPTION")]
    output.print_table(
        columns,
        (
            (
                info.id,
                pb.TokenKind.Name(info.kind).removeprefix("TOKEN_KIND_").lower(),
                info.pool or "-",
                _time(info.create_time) if info.HasField("create_time") else "-",
                _time(info.expire_time) if info.HasField("expire_time") else "never",
                "yes" if info.revoked else "no",
                info.description,
            )
            for info in response.tokens
        ),
    )


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@click.pass_obj
def token_revoke(session: Any, token_id: str) -> None:
    """Revoke a token by its id: calls with it are refused, connected agents cut off."""
    response = session.stub.RevokeToken(pb.RevokeTokenRequest(id=token_id))
    output.console.print(f"Revoked token {response.info.id}")


def _time(value: Any) -> str:
    return str(value.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))
