"""The admin token file: created on first start so that the local CLI works with no setup.

The server writes a freshly minted admin token to ``<data dir>/admin.token`` (mode 0600, in a
directory it creates 0700) when the database holds no admin token yet. On later starts the file
is left as it is. The CLI on the same machine reads it when no ``--token`` or
``FLOWYARD_TOKEN`` is given (``control_plane.cli.client``).
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


async def ensure_admin_token(tokens: Tokens, data_dir: Path) -> Path:
    """Mint the first admin token into the data directory unless there is one already."""
    path = admin_token_path(data_dir)
    if path.exists():
        try:
            principal = await tokens.verify(path.read_text().strip())
        except Unauthenticated as exc:
            log.warning("the admin token in %s is not valid: %s", path, exc)
        else:
            if principal.kind is TokenKind.ADMIN:
                return path
    if any(record.kind is TokenKind.ADMIN for record in await tokens.list()):
        # An admin minted (or revoked) admin tokens on purpose: never mint behind their back.
        log.warning(
            "%s holds no valid admin token; use an admin token you have "
            "(flowyard --token ... token create --admin)",
            path,
        )
        return path
    token, record = await tokens.create(TokenKind.ADMIN, "", "created on first start", 0)
    write_secret(path, token + "\n")
    log.info("created admin token %s in %s", record.id, path)
    return path


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
