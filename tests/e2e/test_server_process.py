"""The ``flowyard server start`` process as a whole: it does not run on without its loops."""

from __future__ import annotations

import sqlite3

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2

from .conftest import DEADLINE, POOL, System


def test_a_loop_that_fails_for_good_stops_the_server_with_one_error_line(system: System) -> None:
    system.deploy("unreadable", "def main():\n    pass\n")
    # Stored data no scheduling pass can read: every pass would fail the same way.
    with sqlite3.connect(system.root / "server" / "flowyard.db") as db:
        db.execute("UPDATE deployments SET schedules = '{not json' WHERE name = 'unreadable'")
    # A new deployment wakes the scheduler, whose pass reads every deployment.
    source = system.write_flow("wakes", "def main():\n    pass\n")
    system.stub.UpsertDeployment(
        pb.UpsertDeploymentRequest(
            deployment=types_pb2.Deployment(
                name="wakes",
                entrypoint="flow.py:main",
                source=types_pb2.Source(local=types_pb2.LocalSource(path=str(source))),
                pool=POOL,
            )
        )
    )
    code = system.server.process.wait(DEADLINE)
    log = system.server.log_path.read_text()
    assert code == 1, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log
    assert errors[0].startswith("error: the control plane stopped: the scheduler failed: "), log
    # The log above it says the same, with the traceback that explains it.
    assert "the scheduler failed" in log and "Traceback (most recent call last)" in log
