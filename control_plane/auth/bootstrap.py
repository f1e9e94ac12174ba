"""The first admin token: how an admin reaches a fresh server.

By default the server writes a freshly minted admin token to ``<data dir>/admin.token`` (mode
0600, in a directory it creates 0700) when the database holds no admin token yet. On later
starts the file is left as it is. The CLI on the same machine reads it when no ``--token`` or
``FLOWYARD_TOKEN`` is given (``control_plane.cli.client``).

Where nobody reads the server's data directory (replicas in pods, each with a volume of its
own), the admin gives the first admin token instead (``--admin-token`` /
``FLOWYARD_ADMIN_TOKEN``, from a Kubernetes Secret): the server stores its hash when the
database holds no admin token yet, and writes no file. Replicas that start together all
register it, and it is stored once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from control_plane.auth.registry import Tokens
from control_plane.config import admin_token_path
from control_plane.errors import Unauthenticated
from control_plane.models import TokenKind

log = logging.getLogger(__name__)


#: How a registered admin token is described in ``flowyard token ls``.
GIVEN_DESCRIPTION = "given at first start (FLOWYARD_ADMIN_TOKEN)"


async def ensure_admin_token(tokens: Tokens, data_dir: Path, given: str = "") -> None:
    """Register the admin token ``given``, or without one mint the first admin token into the
    data directory, unless the database holds an admin token already."""
    if given:
        await _register(tokens, given)
    else:
        await _mint_into(tokens, data_dir)


async def _register(tokens: Tokens, given: str) -> None:
    try:
        principal = await tokens.verify(given)
    except Unauthenticated as exc:
        why = str(exc).partition(";")[0]
    else:
        if principal.kind is TokenKind.ADMIN:
            return
        why = f"it is an {principal.kind.value} token"
    if any(record.kind is TokenKind.ADMIN for record in await tokens.list()):
        # Revoked, expired, or made for another database: admins manage tokens from here on.
        log.warning(
            "FLOWYARD_ADMIN_TOKEN is not a valid admin token (%s); it is registered only while "
            "the database holds no admin token, and it holds some: use an admin token you have",
            why,
        )
        return
    record = await tokens.register_admin(given, GIVEN_DESCRIPTION)
    log.info("registered admin token %s (FLOWYARD_ADMIN_TOKEN)", record.id)


async def _mint_into(tokens: Tokens, data_dir: Path) -> None:
    path = admin_token_path(data_dir)
    if path.exists():
        try:
            principal = await tokens.verify(path.read_text().strip())
        except Unauthenticated as exc:
            log.warning("the admin token in %s is not valid: %s", path, exc)
        else:
            if principal.kind is TokenKind.ADMIN:
                return
    if any(record.kind is TokenKind.ADMIN for record in await tokens.list()):
        # An admin minted (or revoked) admin tokens on purpose: never mint behind their back.
        log.warning(
            "%s holds no valid admin token; use an admin token you have "
            "(flowyard --token ... token create --admin)",
            path,
        )
        return
    token, record = await tokens.create(TokenKind.ADMIN, "", "created on first start", 0)
    write_secret(path, token + "\n")
    log.info("created admin token %s in %s", record.id, path)


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, replacing the file atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
