"""Network faults between the control plane and its clients: resets and partitions.

The agent and the engine reach the control plane through relays the test controls
(``tests/faults/proxy.py``), so a stream can be broken without killing anyone. After the
network heals every run ends, each ran once, and each log line is stored exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.e2e.conftest import System, pid_alive, running_system, wait_for
from tests.faults.proxy import Relay
from tests.faults.test_kills import SLEEPY, TICKER, engine_pid, ticks

#: Heartbeat cadence for these tests: an agent notices a silent server after 3 beats.
HEARTBEAT_SECONDS = 0.5
RUNNING = types_pb2.STATE_TYPE_RUNNING


@pytest.fixture
def networked(tmp_path: Path) -> Iterator[System]:
    """A system whose control plane asks for fast heartbeats."""
    server_args = ["--heartbeat-seconds", str(HEARTBEAT_SECONDS)]
    with running_system(tmp_path, server_args=server_args) as system:
        yield system


def agent_behind(system: System, server_via: str, *, engines_via: str, name: str) -> None:
    """Start an agent that reaches the control plane at ``server_via``, its engines at
    ``engines_via`` (either the control plane's address or a relay's)."""
    system.start_agent(name, extra_args=["--engine-server", engines_via], server=server_via)


def attempts(system: System, run_id: str) -> set[int]:
    history = system.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
    return {state.attempt for state in history}


def assert_once_in_order(system: System, run_id: str, n: int) -> None:
    run = system.run(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert ticks(system, run_id) == list(range(n))  # every line, once, in order
    seqs = [line.seq for line in system.logs(run_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert attempts(system, run_id) == {1}  # never re-run


def test_agent_stream_reset_mid_run_reconnects_and_loses_nothing(networked: System) -> None:
    with Relay(networked.address) as relay:
        agent_behind(networked, relay.address, engines_via=networked.address, name="reset")
        networked.deploy("ticker", TICKER)
        n = 80
        running = networked.create_run("ticker", n=n, pause=0.03)
        wait_for(lambda: len(ticks(networked, running)) >= 5, what="the flow running")
        with relay.refusing():
            relay.cut()
            wait_for(lambda: networked.pool().connected_agents == 0, what="the session closed")
            # Created while the agent is cut off: it must be dispatched after the reconnect.
            waiting = networked.create_run("ticker", n=3, pause=0.0)
        wait_for(lambda: networked.pool().connected_agents == 1, what="the agent back")
        for run_id in (running, waiting):
            networked.wait_terminal(run_id, timeout=60)
        assert_once_in_order(networked, running, n)
        assert_once_in_order(networked, waiting, 3)
        assert networked.agents[0].alive()  # the same process reconnected
        assert relay.connections >= 2


def test_agent_partitioned_is_replaced_by_its_new_session(networked: System) -> None:
    with Relay(networked.address) as relay:
        agent_behind(networked, relay.address, engines_via=networked.address, name="partitioned")
        networked.deploy("sleepy", SLEEPY)
        run_id = networked.create_run("sleepy")
        wait_for(lambda: networked.run(run_id).state.type == RUNNING, what="RUNNING")
        before = relay.connections
        relay.freeze()  # the open connection goes silent: nothing fails, nothing arrives
        # The agent notices the silence and dials again (a new connection, not the frozen
        # one); the server notices it too and closes the old session, releasing its runs.
        wait_for(lambda: relay.connections > before, timeout=30, what="a new connection")
        wait_for(lambda: networked.pool().connected_agents == 1, what="one session left")
        # The new session holds the run now: a cancel reaches the agent and the engine.
        pid = engine_pid(networked, run_id)
        networked.stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="partition test"))
        run = networked.wait_terminal(run_id, timeout=30)
        assert run.state.type == types_pb2.STATE_TYPE_CANCELLED, run.state.message
        wait_for(lambda: not pid_alive(pid), what="the engine process gone")
        assert attempts(networked, run_id) == {1}


GATED_TICKER = """
import os
import time


def main(gate: str) -> int:
    i = 0
    while not os.path.exists(gate):
        print(f"tick {i}", flush=True)
        i += 1
        time.sleep(0.01)
    return i
"""


def test_engine_stream_reset_while_logs_stream_stores_every_line_once(tmp_path: Path) -> None:
    with running_system(tmp_path) as system, Relay(system.address) as relay:
        agent_behind(system, system.address, engines_via=relay.address, name="e")
        system.deploy("ticker", GATED_TICKER)
        gate = tmp_path / "gate"
        # The flow prints until the test opens the gate, so every reset lands mid-stream.
        run_id = system.create_run("ticker", gate=str(gate))
        wait_for(lambda: len(ticks(system, run_id)) >= 20, what="the first lines")
        for _ in range(3):  # three resets while the flow keeps printing
            seen = len(ticks(system, run_id))
            with relay.refusing():
                relay.cut()
                time.sleep(0.3)  # the outage itself: lines pile up in the engine meanwhile
            wait_for(lambda s=seen: len(ticks(system, run_id)) > s, what="lines flowing again")
        gate.touch()
        run = system.wait_terminal(run_id, timeout=60)
        assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
        assert_once_in_order(system, run_id, int(run.result_summary))


def test_engine_killed_while_logs_stream_leaves_no_gap_and_no_duplicate(faulty: System) -> None:
    system = faulty
    system.start_agent()
    system.deploy("ticker", TICKER)
    run_id = system.create_run("ticker", n=10_000, pause=0.002)
    wait_for(lambda: len(ticks(system, run_id)) >= 200, what="lines streaming")
    os.kill(engine_pid(system, run_id), signal.SIGKILL)
    run = system.wait_terminal(run_id, timeout=30)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    lines = system.logs(run_id)
    flow = [line for line in lines if line.stream != types_pb2.LOG_STREAM_SYSTEM]
    stored = [int(line.text.split()[1]) for line in flow if line.text.startswith("tick ")]
    # What was acknowledged before the kill is stored; what was still in the dead process is
    # gone with it. Either way the flow's lines are one unbroken prefix, each once, followed
    # by Flowyard's own note of how the process ended.
    assert len(stored) >= 200
    assert stored == list(range(len(stored)))
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1].stream == types_pb2.LOG_STREAM_SYSTEM
