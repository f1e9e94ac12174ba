"""The first admin token given to the server (``FLOWYARD_ADMIN_TOKEN``), on each store.

Replicas in pods share one database and nobody reads their data directories: the admin gives
the first admin token, every replica registers it, and it is stored once, as a hash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from control_plane.auth.bootstrap import GIVEN_DESCRIPTION
from control_plane.auth.registry import Tokens
from control_plane.cli.main import cli
from control_plane.config import ServerConfig, admin_token_path
from control_plane.errors import InvalidArgument, Unauthenticated
from control_plane.models import TokenKind
from control_plane.orchestration import tokens
from control_plane.server import App, build

Started = Callable[[Path, str], AbstractAsyncContextManager[Tokens]]


@pytest.fixture
def started(db_url: str | None, tmp_path: Path) -> Started:
    """A control plane built (up to serving) on the test's one database, whatever its data
    directory: its tokens, then closed."""
    url = db_url or f"sqlite:///{tmp_path / 'shared.db'}"

    @asynccontextmanager
    async def start(data_dir: Path, admin_token: str) -> AsyncIterator[Tokens]:
        app: App = await build(
            ServerConfig(port=0, data_dir=data_dir, db_url=url, admin_token=admin_token)
        )
        try:
            yield Tokens(app.db, app.bus)
        finally:
            await app.db.close()

    return start


async def test_replicas_given_one_token_store_it_once_and_write_no_file(
    tmp_path: Path, started: Started
) -> None:
    given = tokens.mint()[0]
    replicas = [tmp_path / "a", tmp_path / "b"]
    async with started(replicas[0], given), started(replicas[1], given) as tokens_:
        assert (await tokens_.verify(given)).kind is TokenKind.ADMIN
        [record] = await tokens_.list()
        assert record.id == tokens.token_id(given) and record.description == GIVEN_DESCRIPTION
    async with started(tmp_path / "later", given) as tokens_:  # a restart changes nothing
        assert await tokens_.list() == [record]
    for data_dir in replicas:
        assert not admin_token_path(data_dir).exists()


async def test_a_token_stored_a_moment_before_is_what_registering_returns(
    tmp_path: Path, started: Started
) -> None:
    """What replicas that lose the race to register the given token meet: no error."""
    given = tokens.mint()[0]
    async with started(tmp_path, "") as tokens_:
        [minted] = await tokens_.list()  # the file's
        stored = await tokens_.register_admin(given, GIVEN_DESCRIPTION)
        again = await asyncio.gather(
            tokens_.register_admin(given, GIVEN_DESCRIPTION),
            tokens_.register_admin(given, GIVEN_DESCRIPTION),
        )
        assert again == [stored, stored]
        # The same id with another secret is someone else's token.
        other = f"{tokens.token_id(given)}.{tokens.mint()[0].split('.')[1]}"
        with pytest.raises(InvalidArgument, match="taken by another token"):
            await tokens_.register_admin(other, GIVEN_DESCRIPTION)
        assert [r.id for r in await tokens_.list()] == [minted.id, stored.id]


async def test_a_given_token_is_not_registered_once_admins_have_tokens(
    tmp_path: Path, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    given = tokens.mint()[0]
    async with started(tmp_path, ""):
        pass
    caplog.set_level(logging.WARNING, logger="control_plane.auth.bootstrap")
    async with started(tmp_path / "pod", given) as tokens_:
        with pytest.raises(Unauthenticated):
            await tokens_.verify(given)
        assert len(await tokens_.list()) == 1
    assert "FLOWYARD_ADMIN_TOKEN is not a valid admin token (unknown token" in caplog.text
    assert given.split(".")[1] not in caplog.text


async def test_a_revoked_given_token_stays_revoked_after_a_restart(
    tmp_path: Path, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    given = tokens.mint()[0]
    async with started(tmp_path, given) as tokens_:
        await tokens_.revoke(tokens.token_id(given))
    caplog.set_level(logging.WARNING, logger="control_plane.auth.bootstrap")
    async with started(tmp_path, given) as tokens_:
        with pytest.raises(Unauthenticated, match="revoked"):
            await tokens_.verify(given)
        assert len(await tokens_.list()) == 1
    assert "was revoked" in caplog.text
    assert not admin_token_path(tmp_path).exists()


def test_a_malformed_token_stops_the_server_before_it_starts(tmp_path: Path) -> None:
    weak = "0123456789abcdef.short-secret"
    result = CliRunner().invoke(
        cli,
        ["server", "start", "--data-dir", str(tmp_path)],
        env={"FLOWYARD_ADMIN_TOKEN": weak},
    )
    assert result.exit_code == 2, result.output
    assert "FLOWYARD_ADMIN_TOKEN" in result.output and "openssl rand" in result.output
    assert "short-secret" not in result.output
    assert list(tmp_path.iterdir()) == []  # no database made


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "control_plane.auth.bootstrap" and record.levelno == logging.WARNING
    ]


async def test_a_replica_without_a_file_says_whose_token_to_use_not_that_its_file_is_bad(
    tmp_path: Path, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(tmp_path / "s0", "") as tokens_:
        [first] = await tokens_.list()
    caplog.set_level(logging.WARNING, logger="control_plane.auth.bootstrap")
    async with started(tmp_path / "s1", ""):
        pass
    path = admin_token_path(tmp_path / "s1")
    assert not path.exists()
    [warning] = _warnings(caplog)
    assert warning.startswith(
        f"no admin token file {path}: this database has admin token {first.id}, "
        "made by another server on this database"
    ), warning
    assert "admin.token file of the data directory of the server that made it" in warning
    assert "FLOWYARD_ADMIN_TOKEN" in warning and "holds" not in warning


async def test_a_replica_without_a_file_beside_replicas_given_a_token_says_to_give_it_too(
    tmp_path: Path, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    given = tokens.mint()[0]
    async with started(tmp_path / "s0", given):
        pass
    caplog.set_level(logging.WARNING, logger="control_plane.auth.bootstrap")
    async with started(tmp_path / "s1", ""):
        pass
    [warning] = _warnings(caplog)
    assert warning == (
        f"no admin token file {admin_token_path(tmp_path / 's1')}: this database has admin "
        f"token {tokens.token_id(given)}, given to a replica as FLOWYARD_ADMIN_TOKEN. Use that "
        "token (FLOWYARD_TOKEN for the CLI), and give this server the same "
        "FLOWYARD_ADMIN_TOKEN as the others"
    )


async def test_a_file_whose_token_the_database_does_not_know_says_so_once(
    tmp_path: Path, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(tmp_path / "s0", "") as tokens_:
        [first] = await tokens_.list()
    foreign = tokens.mint()[0]  # e.g. the file of a server on another database
    path = admin_token_path(tmp_path / "s1")
    path.parent.mkdir()
    path.write_text(foreign + "\n")
    caplog.set_level(logging.WARNING, logger="control_plane.auth.bootstrap")
    async with started(tmp_path / "s1", ""):
        pass
    [warning] = _warnings(caplog)
    assert warning.startswith(
        f"{path} holds no admin token this database accepts "
        f"(unknown token {tokens.token_id(foreign)!r}); this database has admin token "
        f"{first.id}, and the server makes no other"
    ), warning
    assert path.read_text() == foreign + "\n"  # left as it was
