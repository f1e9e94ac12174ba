"""SIGKILL at the worst moments: every run still ends, nothing runs twice, no log line is lost."""

from __future__ import annotations

import os
import signal
import time

from control_plane.cli.processes import start_server
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.e2e.conftest import System, pid_alive, wait_for

TICKER = """
import time


def main(n: int = 40, pause: float = 0.05) -> int:
    for i in range(n):
        print(f"tick {i}", flush=True)
        time.sleep(pause)
    return n
"""

SLEEPY = """
import time


def main() -> None:
    print("sleeping", flush=True)
    time.sleep(600)
"""


def engine_pid(system: System, run_id: str) -> int:
    return int(system.run(run_id).infrastructure_id.rsplit("/", 1)[1])


def ticks(system: System, run_id: str) -> list[int]:
    return [
        int(line.text.split()[1]) for line in system.logs(run_id) if line.text.startswith("tick ")
    ]


def test_engine_killed_mid_run_ends_crashed_with_the_exit(faulty: System) -> None:
    faulty.start_agent()
    faulty.deploy("sleepy", SLEEPY)
    run_id = faulty.create_run("sleepy")
    wait_for(lambda: faulty.run(run_id).state.type == types_pb2.STATE_TYPE_RUNNING, what="RUNNING")
    pid = engine_pid(faulty, run_id)
    os.kill(pid, signal.SIGKILL)
    run = faulty.wait_terminal(run_id, timeout=30)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    assert "SIGKILL" in run.state.message or "137" in run.state.message


def test_control_plane_killed_while_logs_stream_loses_no_line(faulty: System) -> None:
    faulty.start_agent()
    faulty.deploy("ticker", TICKER)
    n = 120
    run_id = faulty.create_run("ticker", n=n, pause=0.03)
    wait_for(lambda: len(ticks(faulty, run_id)) >= 20, what="the first lines")
    data_dir = faulty.server.log_path.parent
    port = int(faulty.address.rsplit(":", 1)[1])
    faulty.server.kill()  # mid-stream: the engine buffers, the agent loses its stream
    time.sleep(0.5)  # the outage itself: lines keep being written meanwhile
    faulty.server = start_server(data_dir, port=port)
    run = faulty.wait_terminal(run_id, timeout=60)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert ticks(faulty, run_id) == list(range(n))  # every line once, in order
    seqs = [line.seq for line in faulty.logs(run_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    history = faulty.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
    assert [h.attempt for h in history] == [1] * len(history)  # one attempt, never re-run


BURST = """
def main(n: int) -> int:
    for i in range(n):
        print(f"tick {i}")
    return n
"""


def test_control_plane_killed_mid_burst_gets_every_line_in_flight_again(faulty: System) -> None:
    # A flow that prints as fast as it can keeps the engine's whole in-flight window (several
    # batches) unacknowledged: after the restart all of it is sent again, in order.
    faulty.start_agent()
    faulty.deploy("burst", BURST)
    n = 200_000
    run_id = faulty.create_run("burst", n=n)
    wait_for(lambda: len(ticks(faulty, run_id)) >= 10_000, what="the burst under way")
    data_dir = faulty.server.log_path.parent
    port = int(faulty.address.rsplit(":", 1)[1])
    faulty.server.kill()
    faulty.server = start_server(data_dir, port=port)
    run = faulty.wait_terminal(run_id, timeout=120)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    lines = faulty.logs(run_id)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    stored = [int(line.text.split()[1]) for line in lines if line.text.startswith("tick ")]
    dropped = sum(int(line.text.split()[0]) for line in lines if "log lines dropped" in line.text)
    # Lines written while no control plane answered may be dropped (behind one marker that
    # counts them) once the engine's buffer is full; none that it numbered is lost.
    assert len(stored) + dropped == n
    assert stored == sorted(set(stored))


def test_agent_killed_after_assignment_before_accepting_loses_nothing(faulty: System) -> None:
    agent = faulty.start_agent(name="frozen")
    faulty.deploy("ticker", TICKER)
    os.kill(agent.pid, signal.SIGSTOP)  # it receives the assignment but cannot act on it
    try:
        run_id = faulty.create_run("ticker", n=3, pause=0.0)
        wait_for(lambda: faulty.run(run_id).state.name == "Assigned", what="assigned")
    finally:
        os.kill(agent.pid, signal.SIGKILL)
        os.kill(agent.pid, signal.SIGCONT)
        agent.process.wait()
    wait_for(lambda: faulty.run(run_id).state.name != "Assigned", what="released")
    faulty.start_agent(name="frozen")
    run = faulty.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED
    assert ticks(faulty, run_id) == [0, 1, 2]  # ran once
    assert not pid_alive(agent.pid)


def test_agent_killed_while_its_flow_runs_does_not_stop_the_run(faulty: System) -> None:
    agent = faulty.start_agent(name="mortal")
    faulty.deploy("ticker", TICKER)
    n = 60
    run_id = faulty.create_run("ticker", n=n, pause=0.03)
    wait_for(lambda: len(ticks(faulty, run_id)) >= 5, what="the flow running")
    agent.kill()  # disconnected is not lost: the engine reports on its own
    run = faulty.wait_terminal(run_id, timeout=60)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED
    assert ticks(faulty, run_id) == list(range(n))


def test_node_lost_agent_and_engine_killed_ends_crashed_by_silence(faulty: System) -> None:
    # The whole machine goes away: nobody is left to report the exit, so only the engine's
    # silence can tell. Restart the control plane with a short grace to see it happen.
    data_dir = faulty.server.log_path.parent
    port = int(faulty.address.rsplit(":", 1)[1])
    faulty.server.stop()
    faulty.server = start_server(data_dir, port=port, extra_args=["--engine-grace-seconds", "2"])
    agent = faulty.start_agent(name="doomed")
    faulty.deploy("sleepy", SLEEPY)
    run_id = faulty.create_run("sleepy")
    wait_for(lambda: faulty.run(run_id).state.type == types_pb2.STATE_TYPE_RUNNING, what="RUNNING")
    pid = engine_pid(faulty, run_id)
    agent.kill()
    os.kill(pid, signal.SIGKILL)
    run = faulty.wait_terminal(run_id, timeout=30)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    assert "The engine stopped reporting" in run.state.message
