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

Replicas started together without one share the admin token of the first: only its data
directory gets the file, and each other replica says which token the database has and where
it is, rather than that a file it never had is wrong.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from control_plane.auth.registry import Tokens
from control_plane.config import admin_token_path
from control_plane.errors import Unauthenticated
from control_plane.models import TokenKind, TokenRecord
from control_plane.orchestration import clock

log = logging.getLogger(__name__)


#: How a registered admin token is described in ``flowyard token ls``.
GIVEN_DESCRIPTION = "given at first start (FLOWYARD_ADMIN_TOKEN)"
#: Admin tokens named, at most, in a warning that says which ones the database has.
MAX_NAMED_TOKENS = 3


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
    # Why the file's token does not serve, when there is a file.
    refused: str | None = None
    if path.exists():
        try:
            principal = await tokens.verify(path.read_text().strip())
        except Unauthenticated as exc:
            refused = str(exc).partition(";")[0]
        else:
            if principal.kind is TokenKind.ADMIN:
                return
            refused = f"it is an {principal.kind.value} token"
    admins = [record for record in await tokens.list() if record.kind is TokenKind.ADMIN]
    if admins:
        # An admin minted (or revoked) admin tokens on purpose, or another replica made the
        # first one a moment ago: never mint behind their back.
        log.warning("%s", _no_token_here(path, refused, admins))
        return
    if refused is not None:
        log.warning("the admin token in %s is not valid (%s); replacing it", path, refused)
    token, record = await tokens.create(TokenKind.ADMIN, "", "created on first start", 0)
    write_secret(path, token + "\n")
    log.info("created admin token %s in %s", record.id, path)


def _no_token_here(path: Path, refused: str | None, admins: list[TokenRecord]) -> str:
    """What to tell an admin whose server finds no admin token it accepts in its data
    directory (none there, or one ``refused``), while the database holds ``admins``."""
    now = clock.now()
    usable = [
        record
        for record in admins
        if record.revoked_at is None and (record.expires_at is None or record.expires_at > now)
    ]
    if refused is not None:
        return (
            f"{path} holds no admin token this database accepts ({refused}); "
            f"{_tokens_known(usable)}, and the server makes no other behind its admins' back: "
            "use an admin token you have (flowyard --token ... token create --admin), and put "
            "the new one in that file for the CLI on this machine"
        )
    if any(record.description == GIVEN_DESCRIPTION for record in usable):
        where = (
            "given to a replica as FLOWYARD_ADMIN_TOKEN. Use that token (FLOWYARD_TOKEN for "
            "the CLI), and give this server the same FLOWYARD_ADMIN_TOKEN as the others"
        )
    else:
        where = (
            "made by another server on this database (a replica that started first, or an "
            "earlier start with another data directory), so this server writes none. Use that "
            "token: it is in the admin.token file of the data directory of the server that made "
            f"it; give it to the CLI as FLOWYARD_TOKEN, or copy that file to {path}. Replicas "
            "started together on an empty database with the same FLOWYARD_ADMIN_TOKEN all "
            "share that one instead (see docs/scale-out.md)"
        )
    return f"no admin token file {path}: {_tokens_known(usable)}, {where}"


def _tokens_known(usable: list[TokenRecord]) -> str:
    if not usable:
        return "every admin token of this database is revoked or expired"
    ids = [record.id for record in usable[:MAX_NAMED_TOKENS]]
    more = len(usable) - len(ids)
    named = ", ".join(ids) + (f" and {more} more" if more else "")
    return f"this database has admin token{'s' if len(usable) > 1 else ''} {named}"


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
