"""An assignment the server did not hear about in time: the run still completes, once.

Each test makes the server lose sight of an assignment after it was sent, in one of the ways
users hit: the agent's reports are lost (a one-way partition), the agent stalls, the agent is
frozen past its lease, the control plane is down past the lease. Whatever the server decides
(wait for the agent, or hand the attempt back and run the next one), the run must end
COMPLETED, the flow must have run once, and every line it printed must be stored.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from control_plane.cli.processes import start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.e2e.conftest import System, running_system, wait_for
from tests.faults.proxy import Relay
from tests.faults.test_kills import TICKER, ticks
from tests.ports import free_port

HEARTBEAT = ["--heartbeat-seconds", "0.5"]
COMPLETED = types_pb2.STATE_TYPE_COMPLETED
SCHEDULED = types_pb2.STATE_TYPE_SCHEDULED


def history(system: System, run_id: str) -> list[types_pb2.RunState]:
    return list(system.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history)


def assert_completed_once(system: System, run_id: str) -> types_pb2.FlowRun:
    """The run COMPLETED, the flow ran once, and its last lines are stored."""
    run = system.wait_terminal(run_id, timeout=90)
    assert run.state.type == COMPLETED, (run.state.message, history(system, run_id))
    assert ticks(system, run_id) == [0, 1, 2]
    texts = [line.text for line in system.logs(run_id)]
    assert texts[-1] == "Flow returned 3", texts
    return run


def test_one_way_partition_while_assigned_the_same_attempt_completes(tmp_path: Path) -> None:
    with running_system(tmp_path, server_args=HEARTBEAT) as system, Relay(system.address) as relay:
        # Agent and engines are on the far side of the partition.
        system.start_agent(
            "one-way", extra_args=["--engine-server", relay.address], server=relay.address
        )
        system.deploy("ticker", TICKER)
        with relay.dropping_upstream():
            # The Assign reaches the agent, which starts the engine; nothing they send arrives.
            run_id = system.create_run("ticker", n=3, pause=0.0)
            wait_for(lambda: system.run(run_id).state.name == "Assigned", what="assigned")
            wait_for(lambda: system.pool().connected_agents == 0, what="silent session closed")
        # The agent reconnects well within the lease; its Hello names what it runs.
        run = assert_completed_once(system, run_id)
        assert run.attempt == 1
        assert {state.attempt for state in history(system, run_id)} == {1}


def test_agent_stalled_a_few_seconds_keeps_its_assignment(tmp_path: Path) -> None:
    with running_system(tmp_path, server_args=HEARTBEAT) as system:
        agent = system.start_agent("stalled")
        system.deploy("ticker", TICKER)
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            run_id = system.create_run("ticker", n=3, pause=0.0)
            wait_for(lambda: system.run(run_id).state.name == "Assigned", what="assigned")
            # The server closes the silent session; the lease (30 s) is not over.
            wait_for(lambda: system.pool().connected_agents == 0, what="silent session closed")
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        run = assert_completed_once(system, run_id)
        assert run.attempt == 1


def test_agent_frozen_past_its_lease_the_next_attempt_completes(tmp_path: Path) -> None:
    server_args = [*HEARTBEAT, "--lease-seconds", "2"]
    with running_system(tmp_path, server_args=server_args) as system:
        agent = system.start_agent("frozen")
        system.deploy("ticker", TICKER)
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            run_id = system.create_run("ticker", n=3, pause=0.0)
            wait_for(lambda: system.run(run_id).state.name == "Assigned", what="assigned")
            # Past the lease (2 s) the attempt is handed back: the run waits in the queue.
            wait_for(lambda: system.run(run_id).state.type == SCHEDULED, what="handed back")
        finally:
            # The agent wakes up to the stale Assign still in its socket: it starts attempt
            # 1, whose engine is refused, and then gets attempt 2.
            os.kill(agent.pid, signal.SIGCONT)
        run = assert_completed_once(system, run_id)
        assert run.attempt == 2
        rows = history(system, run_id)
        assert any(
            s.attempt == 1 and "did not confirm it within its lease" in s.message for s in rows
        ), rows
        assert not any(s.type == types_pb2.STATE_TYPE_FAILED for s in rows)
        assert agent.alive()


def test_control_plane_down_longer_than_the_lease_the_run_completes(tmp_path: Path) -> None:
    lease = 3.0
    server_args = ["--lease-seconds", str(lease)]
    with running_system(tmp_path, port=free_port(), server_args=server_args) as system:
        agent = system.start_agent("outage")
        system.deploy("ticker", TICKER)
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            run_id = system.create_run("ticker", n=3, pause=0.0)
            wait_for(lambda: system.run(run_id).state.name == "Assigned", what="assigned")
            data_dir = system.server.log_path.parent
            port = int(system.address.rsplit(":", 1)[1])
            system.server.kill()  # before the agent could say it accepted
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        # The outage itself, past the lease: the agent starts the engine meanwhile, and
        # neither can reach the control plane.
        time.sleep(lease + 2)
        system.server = start_server(data_dir, port=port, extra_args=server_args)
        assert_completed_once(system, run_id)
        assert agent.alive()
