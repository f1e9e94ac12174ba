"""An installed agent's identity: what survives its pod being replaced, and what two agents of
one name get.

Agents here are started exactly as the Deployment of ``flowyard agent install`` starts them:
its container's arguments and environment, each ``fieldRef`` to ``metadata.name`` resolved to
the pod's name, so a replacement pod is a new process under a new pod name and nothing else.
Control plane, agents and engines are real processes; the cluster is the fake one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.kubernetes.install import install_manifests
from control_plane.cli.processes import Child, script
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.e2e.conftest import wait_for
from tests.e2e.test_kubernetes import GATED, HELLO, POOL, KubeSystem, running_kube_system
from tests.ports import free_port

DEADLINE = 30.0
INSTALL = "flowyard-agent"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeSystem]:
    with running_kube_system(tmp_path) as system:
        # The harness's own agent goes: every agent of these tests is an installed one.
        system.agents[0].stop()
        wait_for(lambda: system.pool().connected_agents == 0, what="the harness's agent gone")
        yield system


def start_pod(kube: KubeSystem, pod_name: str) -> Child:
    """Start the agent of the install's Deployment as the kubelet would in pod ``pod_name``."""
    manifests = install_manifests(
        pool=POOL,
        namespace="default",
        image="registry.example.com/flowyard-agent:test",
        server=kube.address,
        agent_token=kube.agent_token,
        name=INSTALL,
    )
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {
        **os.environ,
        "FLOWYARD_AGENT_HEALTH_FILE": str(kube.root / f"{pod_name}.health"),
        **{item["name"]: _value(item, pod_name, kube.agent_token) for item in container["env"]},
        # Each pod has an address of its own; here they share this machine's.
        "FLOWYARD_AGENT_HTTP_PORT": str(free_port()),
    }
    # In the cluster the in-cluster config is used; here the fake cluster's kubeconfig.
    command = [*script("flowyard-agent"), *container["args"], "--kubeconfig"]
    command.append(str(kube.cluster.kubeconfig))
    log_path = kube.root / f"{pod_name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    agent = Child(f"agent pod {pod_name}", process, log_path)
    kube.agents.append(agent)
    return agent


def _value(item: dict[str, Any], pod_name: str, token: str) -> str:
    if "value" in item:
        return str(item["value"])
    source = item["valueFrom"]
    if "fieldRef" in source:
        assert source["fieldRef"]["fieldPath"] == "metadata.name", source
        return pod_name
    assert "secretKeyRef" in source, source
    return token


def connected(kube: KubeSystem, agent: Child) -> bool:
    assert agent.alive(), agent.log_tail()
    return "connected to " in agent.log_path.read_text(errors="replace")


def job_names(kube: KubeSystem) -> set[str]:
    return {job["metadata"]["name"] for job in kube.cluster.jobs()}


def test_a_replaced_agent_pod_takes_over_waiting_and_running_runs(kube: KubeSystem) -> None:
    old = start_pod(kube, "flowyard-agent-7f9c4-aaaaa")
    wait_for(lambda: connected(kube, old), what="the first pod's agent connected")
    kube.deploy("gated-identity", GATED)
    kube.deploy("waiting-identity", HELLO)
    gate = kube.root / "gate-identity"
    running = kube.create_run("gated-identity", gate=str(gate))
    # Its image cannot be pulled: the run waits on its pod, well within its start deadline.
    waiting = kube.create_run(
        "waiting-identity",
        job_variables={"image": "bad/image:1", "pod_start_timeout_seconds": 600},
    )
    wait_for(
        lambda: kube.state(running) == types_pb2.STATE_TYPE_RUNNING, timeout=DEADLINE, what="RUN"
    )
    wait_for(
        lambda: kube.run(waiting).state.name == "InfrastructurePending",
        timeout=DEADLINE,
        what="the waiting run's pod pending",
    )
    jobs = {kube.job_name(running), kube.job_name(waiting)}
    assert jobs <= job_names(kube)
    jobs_created = kube.cluster.create_count("jobs")

    # A rollout (or an eviction, a node drain): the pod is replaced by one with a new name.
    old.stop()
    wait_for(lambda: kube.pool().connected_agents == 0, what="the old pod's agent gone")
    new = start_pod(kube, "flowyard-agent-7f9c4-bbbbb")
    wait_for(lambda: connected(kube, new), what="the new pod's agent connected")
    log = new.log_path
    for run_id in (running, waiting):
        wait_for(lambda r=run_id: f"adopting run {r}#1" in log.read_text(), what="adoption")

    # The waiting run is the new agent's: a cancel reaches it, and it removes the Job.
    assert jobs <= job_names(kube), "the new agent deleted a Job it should have taken over"
    kube.stub.CancelRun(pb.CancelRunRequest(run_id=waiting, reason="taken over"))
    run = kube.wait_terminal(waiting)
    assert run.state.type == types_pb2.STATE_TYPE_CANCELLED, run.state.message
    # The running run is supervised again: what happens to its pod is reported and counts.
    assert kube.job_name(running) in job_names(kube)
    pod = next(
        p["metadata"]["name"]
        for p in kube.cluster.pods()
        if p["metadata"]["labels"].get("job-name") == kube.job_name(running)
    )
    kube.cluster.evict_pod(pod)
    run = kube.wait_terminal(running)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED, run.state.message
    assert "evicted" in run.state.message.lower(), run.state.message
    assert kube.cluster.create_count("jobs") == jobs_created  # taken over, never re-created
    assert "does not hold it" not in kube.server.log_path.read_text(errors="replace")


def test_a_second_agent_of_one_name_is_refused_until_the_first_is_gone(kube: KubeSystem) -> None:
    first = start_pod(kube, "flowyard-agent-5d8b6-aaaaa")
    wait_for(lambda: connected(kube, first), what="the first agent connected")
    # An eviction's replacement starts while the old pod is still draining.
    second = start_pod(kube, "flowyard-agent-5d8b6-bbbbb")
    refusal = "refused, this agent's name is in use"
    wait_for(
        lambda: refusal in second.log_path.read_text(errors="replace"),
        what="the second agent told why it is refused",
    )
    said = second.log_path.read_text(errors="replace")
    assert f"pool {POOL!r}" in said and "'default/flowyard-agent'" in said, said
    assert "reconnecting in" in said, said  # it keeps trying
    assert second.alive() and not connected(kube, second)
    assert kube.pool().connected_agents == 1
    server_log = kube.server.log_path.read_text(errors="replace")
    assert "refused a second agent" in server_log, server_log[-2000:]

    # The first one's pod ends: the second gets in and runs the pool's work.
    first.stop()
    wait_for(lambda: connected(kube, second), timeout=DEADLINE, what="the second agent let in")
    kube.deploy("after-refusal", HELLO)
    run = kube.wait_terminal(kube.create_run("after-refusal", name="second"))
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert kube.pool().connected_agents == 1
