"""Flows on Kubernetes end to end: control plane, kubernetes agent and engine as real processes.

The cluster is the fake one (``tests.fakekube``) running in this test process: its kubelet
starts each pod's command, ``flowyard-engine execute <run id>``, as a local process with the
pod's environment, so the real engine fetches the flow and reports to the control plane. One
cluster, control plane and agent serve the whole module; each test uses its own deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.kubernetes import manifests
from control_plane.cli.client import open_channel
from control_plane.cli.processes import Child, script, start_server
from control_plane.orchestration.templates import DRY_RUN_ID, DRY_RUN_SERVER
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import control_plane_pb2_grpc, types_pb2
from tests.fakekube import FakeCluster

from .conftest import wait_for

POOL = "k8s"
DEADLINE = 30.0

GATED = """
import os
import time


def main(gate: str) -> str:
    print("waiting for the gate", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.05)
    print("released", flush=True)
    return "released"
"""

SLEEPY = """
import time


def main() -> None:
    print("going to sleep", flush=True)
    time.sleep(600)
"""

PRINT_URL = """
import os


def main() -> None:
    print("API_URL=" + os.environ["API_URL"], flush=True)
"""

HELLO = """
def main(name: str = "world") -> int:
    print(f"hello {name}", flush=True)
    return len(name)
"""


@dataclass
class KubeSystem:
    """A fake cluster, a control plane with a kubernetes pool, and the agent serving it."""

    root: Path
    cluster: FakeCluster
    server: Child
    stub: control_plane_pb2_grpc.ControlPlaneServiceStub
    agents: list[Child] = field(default_factory=list)
    #: An agent token of the kubernetes pool.
    agent_token: str = ""

    @property
    def address(self) -> str:
        return self.server.extra["address"]

    @property
    def health_file(self) -> Path:
        return self.root / "agent.health"

    def start_agent(self, name: str = "k8s-agent") -> Child:
        """Start ``flowyard-agent --runtime kubernetes`` and wait until it is connected."""
        log_path = self.root / f"{name}-{len(self.agents)}.log"
        command = [
            *script("flowyard-agent"),
            "--pool",
            POOL,
            "--server",
            self.address,
            "--runtime",
            "kubernetes",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--namespace",
            "default",
            "--name",
            name,
            "--capacity",
            "8",
        ]
        env = {
            **os.environ,
            "FLOWYARD_AGENT_HEALTH_FILE": str(self.health_file),
            "FLOWYARD_TOKEN": self.agent_token,
        }
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        agent = Child(f"agent {name}", process, log_path)
        self.agents.append(agent)
        wait_for(
            lambda: self.pool().connected_agents > 0 or not agent.alive(),
            timeout=DEADLINE,
            what="the agent connected",
        )
        assert agent.alive(), agent.log_tail()
        return agent

    def pool(self) -> types_pb2.WorkPool:
        return self.stub.GetPool(pb.GetPoolRequest(name=POOL)).pool

    def deploy(self, name: str, code: str, job_variables: dict[str, Any] | None = None) -> None:
        source = self.root / "flows" / name
        source.mkdir(parents=True, exist_ok=True)
        (source / "flow.py").write_text(code)
        command = [*script("flowyard"), "--server", self.address, "deploy", "flow.py:main"]
        for key, value in (job_variables or {}).items():
            command += ["--job-variable", f"{key}={json.dumps(value)}"]
        result = subprocess.run(
            [*command, "--name", name, "--pool", POOL, "--source", str(source)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env={**os.environ, "FLOWYARD_TOKEN": self.server.extra["token"]},
        )
        assert result.returncode == 0, result.stderr

    def create_run(
        self, deployment: str, job_variables: dict[str, Any] | None = None, **params: Any
    ) -> str:
        response = self.stub.CreateRun(
            pb.CreateRunRequest(
                deployment_name=deployment,
                parameters_json=json.dumps(params),
                job_variables_json=json.dumps(job_variables or {}),
            )
        )
        return response.run.id

    def run(self, run_id: str) -> types_pb2.FlowRun:
        return self.stub.GetRun(pb.GetRunRequest(run_id=run_id)).run

    def state(self, run_id: str) -> int:
        return self.run(run_id).state.type

    def wait_terminal(self, run_id: str, timeout: float = DEADLINE) -> types_pb2.FlowRun:
        last = None
        for message in self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout):
            last = message.run
        assert last is not None
        return last

    def logs(self, run_id: str) -> list[str]:
        return [
            line.text
            for m in self.stub.TailLogs(pb.TailLogsRequest(run_id=run_id))
            for line in m.lines
        ]

    def cli(self, *args: str) -> str:
        """Run the ``flowyard`` command as the admin; its output."""
        result = subprocess.run(
            [*script("flowyard"), "--server", self.address, *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env={**os.environ, "FLOWYARD_TOKEN": self.server.extra["token"]},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def job_name(self, run_id: str) -> str:
        return manifests.job_name(run_id, 1)

    def agent_log(self) -> str:
        return "\n".join(a.log_path.read_text(errors="replace") for a in self.agents)


@contextlib.contextmanager
def running_kube_system(root: Path, server_args: Sequence[str] = ()) -> Iterator[KubeSystem]:
    """A fake cluster, a control plane with the kubernetes pool and one connected agent."""
    with pytest.MonkeyPatch.context() as patch:
        # The fake kubelet starts pods with this process's environment: flowyard-engine must
        # be on PATH, as it is in the flow image.
        patch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        with FakeCluster(root / "cluster", cpu="4", memory="8Gi") as cluster:
            server = start_server(root / "server", extra_args=list(server_args))
            channel = open_channel(server.extra["address"], server.extra["token"])
            stub = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            stub.CreatePool(
                pb.CreatePoolRequest(
                    name=POOL,
                    type=types_pb2.POOL_TYPE_KUBERNETES,
                    base_job_template_json=json.dumps(manifests.default_template()),
                )
            )
            agent_token = stub.CreateToken(
                pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool=POOL)
            ).token
            system = KubeSystem(root, cluster, server, stub, agent_token=agent_token)
            try:
                system.start_agent()
                yield system
            finally:
                channel.close()
                for agent in system.agents:
                    agent.stop()
                server.stop()


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeSystem]:
    with running_kube_system(tmp_path_factory.mktemp("k8s")) as system:
        yield system


def test_a_flow_runs_to_completed_with_its_logs(k8s: KubeSystem) -> None:
    k8s.deploy("hello", HELLO)
    run_id = k8s.create_run("hello", name="kubernetes")
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert run.result_summary == "10"
    assert run.infrastructure_id == f"default/{k8s.job_name(run_id)}"
    assert "hello kubernetes" in k8s.logs(run_id)
    # The agent heard from the control plane, so its liveness probe passes.
    probe = subprocess.run(
        [*script("flowyard-agent"), "--probe"],
        env={**os.environ, "FLOWYARD_AGENT_HEALTH_FILE": str(k8s.health_file)},
        timeout=DEADLINE,
    )
    assert probe.returncode == 0


def test_an_image_that_cannot_be_pulled_crashes_the_run_at_the_deadline(k8s: KubeSystem) -> None:
    k8s.deploy("bad-image", HELLO)
    run_id = k8s.create_run(
        "bad-image", job_variables={"image": "bad/image:1", "pod_start_timeout_seconds": 3}
    )
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    assert "ImagePullBackOff" in run.state.message or "ErrImagePull" in run.state.message
    assert "bad/image:1" in run.state.message
    # Users see the pull error in the run's logs as soon as it happens, not only at the end.
    assert any("image pull error" in line for line in k8s.logs(run_id))
    name = k8s.job_name(run_id)
    wait_for(
        lambda: all(j["metadata"]["name"] != name for j in k8s.cluster.jobs()),
        what="the Job deleted",
    )


def test_a_pod_no_node_can_take_crashes_the_run_as_unschedulable(k8s: KubeSystem) -> None:
    k8s.deploy("too-big", HELLO)
    run_id = k8s.create_run(
        "too-big", job_variables={"cpu_request": "64", "pod_start_timeout_seconds": 3}
    )
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    assert "Unschedulable" in run.state.message
    assert "Insufficient cpu" in run.state.message


def test_cancel_removes_the_job_and_ends_cancelled(k8s: KubeSystem) -> None:
    k8s.deploy("sleepy", SLEEPY)
    run_id = k8s.create_run("sleepy")
    wait_for(
        lambda: any("going to sleep" in line for line in k8s.logs(run_id)),
        timeout=DEADLINE,
        what="the flow running",
    )
    k8s.stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason="test over"))
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_CANCELLED
    name = k8s.job_name(run_id)
    wait_for(
        lambda: all(j["metadata"]["name"] != name for j in k8s.cluster.jobs()),
        what="the Job deleted",
    )
    wait_for(
        lambda: all(p["metadata"]["labels"].get("job-name") != name for p in k8s.cluster.pods()),
        what="the pod deleted",
    )


def test_watch_faults_mid_run_lose_no_event(k8s: KubeSystem) -> None:
    k8s.deploy("gated-watch", GATED)
    gate = k8s.root / "gate-watch"
    run_id = k8s.create_run("gated-watch", gate=str(gate))
    wait_for(
        lambda: k8s.state(run_id) == types_pb2.STATE_TYPE_RUNNING, timeout=DEADLINE, what="RUNNING"
    )
    wait_for(lambda: k8s.cluster.open_watches() >= 2, what="the agent's watches")
    k8s.cluster.faults.compact()
    k8s.cluster.faults.drop_watches()
    gate.touch()
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    # The agent saw the Job's end although its watches broke and expired meanwhile.
    wait_for(
        lambda: f"run {run_id}#1 ended: succeeded" in k8s.agent_log(),
        what="the agent reporting the end",
    )


def test_an_undeclared_job_variable_is_rejected_at_create_run(k8s: KubeSystem) -> None:
    k8s.deploy("strict", HELLO)
    with pytest.raises(grpc.RpcError) as error:
        k8s.create_run("strict", job_variables={"memory": "1Gi"})
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'memory'" in (error.value.details() or "")


def test_a_restarted_agent_adopts_the_running_job(k8s: KubeSystem) -> None:
    k8s.deploy("gated-restart", GATED)
    gate = k8s.root / "gate-restart"
    run_id = k8s.create_run("gated-restart", gate=str(gate))
    wait_for(
        lambda: k8s.state(run_id) == types_pb2.STATE_TYPE_RUNNING, timeout=DEADLINE, what="RUNNING"
    )
    jobs_before = k8s.cluster.create_count("jobs")
    agent = k8s.agents[-1]
    os.kill(agent.pid, signal.SIGKILL)
    agent.process.wait()
    wait_for(lambda: k8s.pool().connected_agents == 0, timeout=DEADLINE, what="the agent gone")
    k8s.start_agent()
    wait_for(
        lambda: f"adopting run {run_id}#1" in k8s.agent_log(),
        timeout=DEADLINE,
        what="the adoption",
    )
    gate.touch()
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert k8s.cluster.create_count("jobs") == jobs_before  # adopted, never created again
    assert run.infrastructure_id == f"default/{k8s.job_name(run_id)}"
    # The new agent followed the Job it did not create to its end.
    wait_for(
        lambda: f"run {run_id}#1 ended: succeeded" in k8s.agent_log(),
        what="the new agent reporting the end",
    )


def test_a_job_deleted_without_cascade_has_its_flow_stopped(k8s: KubeSystem) -> None:
    k8s.deploy("orphaned", SLEEPY)
    run_id = k8s.create_run("orphaned")
    wait_for(
        lambda: any("going to sleep" in line for line in k8s.logs(run_id)),
        timeout=DEADLINE,
        what="the flow running",
    )
    name = k8s.job_name(run_id)
    # A plain API DELETE of a batch/v1 Job orphans its pods (kubectl would cascade).
    k8s.cluster.delete_job(name, propagation=None)
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    assert "deleted by someone else" in run.state.message
    wait_for(
        lambda: all(p["metadata"]["labels"].get("job-name") != name for p in k8s.cluster.pods()),
        timeout=DEADLINE,
        what="the orphaned pod stopped",
    )


def test_an_image_that_does_not_exist_crashes_the_run_within_a_minute(k8s: KubeSystem) -> None:
    k8s.deploy("no-such-image", HELLO)
    # The default template: pod_start_timeout_seconds stays 300.
    run_id = k8s.create_run("no-such-image", job_variables={"image": "team/flows:missing"})
    run = k8s.wait_terminal(run_id, timeout=60.0)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    assert "ErrImagePull" in run.state.message
    assert "docker.io/team/flows:missing: not found" in run.state.message


def test_a_restarted_agent_watches_jobs_its_runs_put_in_other_namespaces(k8s: KubeSystem) -> None:
    k8s.deploy("elsewhere", SLEEPY)
    run_id = k8s.create_run("elsewhere", job_variables={"namespace": "team-a"})
    wait_for(
        lambda: any("going to sleep" in line for line in k8s.logs(run_id)),
        timeout=DEADLINE,
        what="the flow running",
    )
    agent = k8s.agents[-1]
    os.kill(agent.pid, signal.SIGKILL)
    agent.process.wait()
    wait_for(lambda: k8s.pool().connected_agents == 0, timeout=DEADLINE, what="the agent gone")
    k8s.start_agent()
    wait_for(
        lambda: f"adopting run {run_id}#1" in k8s.agent_log(),
        timeout=DEADLINE,
        what="the adoption",
    )
    [pod] = [
        p
        for p in k8s.cluster.pods("team-a")
        if p["metadata"]["labels"].get("job-name") == k8s.job_name(run_id)
    ]
    k8s.cluster.evict_pod(pod["metadata"]["name"], namespace="team-a")
    # Reported by the agent at once, not by the engine-silence rule a minute later.
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_CRASHED
    assert "Evicted" in run.state.message, run.state.message
    assert run.infrastructure_id == f"team-a/{k8s.job_name(run_id)}"


def test_the_dry_run_render_is_the_job_the_cluster_gets_env_order_included(
    k8s: KubeSystem,
) -> None:
    # Kubernetes expands $(VAR) only from entries before it: the order given must survive.
    env = {"SERVICE_HOST": "api.internal", "API_URL": "http://$(SERVICE_HOST):8080/v1"}
    k8s.deploy("env-order", PRINT_URL, job_variables={"env": env})
    rendered = json.loads(k8s.cli("deployment", "render", "env-order", "-o", "json"))
    run_id = k8s.create_run("env-order")
    run = k8s.wait_terminal(run_id)
    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert "API_URL=http://api.internal:8080/v1" in k8s.logs(run_id)

    [received] = [j for j in k8s.cluster.jobs() if j["metadata"]["name"] == k8s.job_name(run_id)]
    # What only the agent knows: the run's id and the address engines dial.
    expected = json.loads(
        json.dumps(rendered).replace(DRY_RUN_ID, run_id).replace(DRY_RUN_SERVER, k8s.address)
    )
    [container] = received["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert names[:2] == ["SERVICE_HOST", "API_URL"]
    assert_within(expected, received)


def assert_within(expected: Any, actual: Any, where: str = "job") -> None:
    """Every field of ``expected`` is in ``actual`` with the same value; lists in the same
    order. (The API server adds defaults and status, which ``expected`` does not have.)"""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} is missing from the submitted Job"
            assert_within(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (
            f"{where}: {actual!r} != {expected!r}"
        )
        for index, (wanted, got) in enumerate(zip(expected, actual, strict=True)):
            assert_within(wanted, got, f"{where}[{index}]")
    else:
        assert actual == expected, f"{where}: submitted {actual!r}, rendered {expected!r}"
