"""The database going away under a real control plane, through the CLI: each command prints
what the server answered (its database is unavailable; retry in a moment), not that the server
cannot be reached, and works again once the database is back; a server that is not there at
all is still told apart.

The server reaches PostgreSQL through a relay that the test cuts and that then refuses new
connections, as when the database server stops or the network to it fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from control_plane.cli.processes import script
from flowyard.v1 import control_plane_pb2 as pb
from tests.e2e.conftest import DEADLINE, System, running_system
from tests.faults.proxy import Relay
from tests.ports import free_port
from tests.stores import empty

HELLO = """
def main(name: str = "world") -> str:
    return f"hello {name}"
"""

UNAVAILABLE = "error: the database is unavailable right now; retry in a moment (UNAVAILABLE)\n"


@pytest.fixture
def relayed(tmp_path: Path, postgres_url: str) -> Iterator[tuple[System, Relay]]:
    """A control plane whose connections to its PostgreSQL database pass through a relay."""
    empty(postgres_url)
    url = make_url(postgres_url)
    with Relay(f"{url.host}:{url.port or 5432}") as relay:
        port = int(relay.address.rsplit(":", 1)[1])
        db_url = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        with running_system(tmp_path, db_url=db_url) as system:
            yield system, relay


def test_while_the_database_is_away_commands_print_the_servers_answer(
    relayed: tuple[System, Relay],
) -> None:
    system, relay = relayed
    system.deploy("hello", HELLO)
    run_id = system.create_run("hello")
    # A token the server has not checked yet: no cache answers for the database.
    token = system.stub.CreateToken(
        pb.CreateTokenRequest(kind=pb.TOKEN_KIND_ADMIN, description="outage")
    ).token
    commands = [
        ("runs", "ls"),
        ("run", "hello"),
        ("runs", "show", run_id),
        ("logs", run_id),
        ("cancel", run_id),
        ("pool", "ls"),
    ]
    with relay.refusing():
        relay.cut()
        printed = {
            " ".join(command): (result.returncode, result.stderr)
            for command in commands
            if (result := system.cli(*command, token=token))
        }
    assert printed == dict.fromkeys(printed, (1, UNAVAILABLE))
    shown = system.cli("runs", "show", run_id, token=token)
    assert shown.returncode == 0, shown.stderr


def test_a_server_that_is_not_there_cannot_be_reached() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*script("flowyard"), "--server", nowhere, "pool", "ls"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: cannot reach the control plane at {nowhere}: is 'flowyard server start' "
        "running there?"
    ), result.stderr
    assert "Connection refused" in result.stderr, result.stderr
