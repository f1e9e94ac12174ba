"""Faults on the Kubernetes runtime: the agent dies in the middle of submitting a Job.

The fake API server parks the agent's Job create so the test can kill the agent at exactly
that moment: after it accepted the assignment and created the run's Secret, before the Job
exists. Whether the create then lands or not, the run ends once, with one Job.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.e2e.conftest import wait_for
from tests.e2e.test_kubernetes import HELLO, KubeSystem, running_kube_system

DEADLINE = 60.0


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeSystem]:
    # A short lease, so an accepted but never submitted assignment comes back quickly, yet
    # long enough for a restarted agent to confirm the Job that did land.
    with running_kube_system(tmp_path, server_args=["--lease-seconds", "8"]) as system:
        yield system


def history(kube: KubeSystem, run_id: str) -> list[types_pb2.RunState]:
    return list(kube.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history)


def kill_the_agent_mid_create(kube: KubeSystem, name: str, *, lands: bool) -> str:
    """Create a run of "hello" and SIGKILL the agent while its Job create is parked in the
    API server; then the create is lost (``lands`` false) or applied. Returns the run id."""
    hold = kube.cluster.faults.hold_create("jobs")
    run_id = kube.create_run("hello", name=name)
    assert hold.arrived.wait(DEADLINE), "the agent never tried to create the Job"
    # The agent reports Accepted before it submits, but the report may still be on its way.
    run = wait_for(
        lambda: (r := kube.run(run_id)).accept_time.seconds > 0 and r,
        timeout=DEADLINE,
        what="the server recording the acceptance",
    )
    assert run.state.name == "Assigned"  # accepted, not submitted
    agent = kube.agents[-1]
    os.kill(agent.pid, signal.SIGKILL)
    agent.process.wait()
    hold.release(apply=lands)
    return run_id


def test_agent_killed_before_its_job_exists_the_run_is_requeued_and_runs_once(
    kube: KubeSystem,
) -> None:
    kube.deploy("hello", HELLO)
    jobs_before = kube.cluster.create_count("jobs")
    run_id = kill_the_agent_mid_create(kube, "fault", lands=False)  # no Job: died with it
    wait_for(
        lambda: any("Handed back" in s.message for s in history(kube, run_id)),
        timeout=DEADLINE,
        what="the lease running out",
    )
    kube.start_agent()
    run = kube.wait_terminal(run_id, timeout=DEADLINE)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert kube.cluster.create_count("jobs") == jobs_before + 1  # one Job, from the new agent
    # The unconfirmed attempt was handed back: the run ran as attempt 2, with its own token.
    assert {s.attempt for s in history(kube, run_id)} == {1, 2}
    assert run.attempt == 2
    assert "hello fault" in kube.logs(run_id)
    # The new attempt's Secret belongs to its Job. (Attempt 1's Secret, created before the
    # agent died, holds a token that expired with its attempt.)
    secrets = {s["metadata"]["name"]: s for s in kube.cluster.secrets()}
    assert secrets[f"flowyard-{run_id}-2"]["metadata"].get("ownerReferences")


def test_agent_killed_while_its_job_create_lands_the_job_runs_once(kube: KubeSystem) -> None:
    kube.deploy("hello", HELLO)
    jobs_before = kube.cluster.create_count("jobs")
    # The API server got the request just before the agent died: the Job exists.
    run_id = kill_the_agent_mid_create(kube, "late", lands=True)
    kube.start_agent()
    run = kube.wait_terminal(run_id, timeout=DEADLINE)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert kube.cluster.create_count("jobs") == jobs_before + 1  # never a second Job
    assert "hello late" in kube.logs(run_id)
    assert {s.attempt for s in history(kube, run_id)} == {1}
