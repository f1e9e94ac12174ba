"""Benchmark: the Kubernetes start path, on the fake cluster the tests use.

Starts the fake kube-apiserver and kubelet (``tests/fakekube``, in this process), a control
plane with a kubernetes pool and ``flowyard-agent --runtime kubernetes`` against the cluster,
then creates ``--runs`` runs one after another (default 30), each after the previous one's
Job exists. For each run:

- create -> Assigned: the time the control plane recorded for the claim;
- create -> Job created: when a watch on Jobs (the official client, as any user would watch)
  delivers the Job's ADDED event;
- create -> Submitted: the time the control plane recorded for the agent's ``Submitted``.

The Jobs' pods do run the engine; the runs are not waited for.

Usage: python bench/kube_submit.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dispatch_latency import millis, percentile
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the fake cluster lives with the tests

from control_plane.cli.client import open_channel  # noqa: E402
from control_plane.cli.processes import script, start_server  # noqa: E402
from flowyard.v1 import control_plane_pb2 as pb  # noqa: E402
from flowyard.v1 import control_plane_pb2_grpc, types_pb2  # noqa: E402
from tests.fakekube import FakeCluster  # noqa: E402

POOL = "k8s"
FLOW = "def main() -> None:\n    return None\n"


def watch_jobs(
    kubeconfig: Path, added: queue.Queue[tuple[str, float]], ready: threading.Event
) -> None:
    """Put (run id, arrival time) for every Job the cluster reports ADDED."""
    # The client is not typed.
    api = client.BatchV1Api(config.new_client_from_config(str(kubeconfig)))  # type: ignore[no-untyped-call]
    watcher = watch.Watch()  # type: ignore[no-untyped-call]
    stream = watcher.stream(api.list_namespaced_job, "default", timeout_seconds=600)  # type: ignore[no-untyped-call]
    ready.set()
    for event in stream:
        if event["type"] == "ADDED":
            labels = event["object"].metadata.labels or {}
            added.put((labels.get("flowyard.io/run-id", ""), time.time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="flowyard-bench-kube-"))
    try:
        with FakeCluster(root / "cluster") as cluster:
            to_assigned, to_job, to_submitted = measure(cluster, root, args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.runs} runs one after another on the fake cluster")
    print(f"{'':<28}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for label, values in (
        ("create -> Assigned (server)", to_assigned),
        ("create -> Job created", to_job),
        ("create -> Submitted", to_submitted),
    ):
        print(
            f"{label:<28}{percentile(values, 50):>10.1f}{percentile(values, 95):>10.1f}"
            f"{max(values):>10.1f}"
        )


def measure(
    cluster: FakeCluster, root: Path, runs: int
) -> tuple[list[float], list[float], list[float]]:
    """create -> Assigned, -> Job created and -> Submitted of ``runs`` runs, in milliseconds."""
    server = start_server(root / "server")
    agent = None
    try:
        address, token = server.extra["address"], server.extra["token"]
        stub: Any = control_plane_pb2_grpc.ControlPlaneServiceStub(open_channel(address, token))
        stub.CreatePool(pb.CreatePoolRequest(name=POOL, type=types_pb2.POOL_TYPE_KUBERNETES))
        agent_token = stub.CreateToken(
            pb.CreateTokenRequest(kind=pb.TOKEN_KIND_AGENT, pool=POOL, description=POOL)
        ).token
        source = root / "flow"
        source.mkdir()
        (source / "flow.py").write_text(FLOW)
        deploy = [*script("flowyard"), "--server", address, "deploy", "flow.py:main"]
        deploy += ["--name", "noop", "--pool", POOL, "--source", str(source)]
        env = {**os.environ, "FLOWYARD_TOKEN": token}
        subprocess.run(deploy, check=True, env=env, capture_output=True)
        with (root / "agent.log").open("wb") as log:
            agent = subprocess.Popen(
                [
                    *script("flowyard-agent"),
                    *("--pool", POOL, "--server", address, "--runtime", "kubernetes"),
                    *("--kubeconfig", str(cluster.kubeconfig), "--capacity", "64"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FLOWYARD_TOKEN": agent_token},
            )
        deadline = time.monotonic() + 60
        while stub.GetPool(pb.GetPoolRequest(name=POOL)).pool.connected_agents == 0:
            if time.monotonic() > deadline or agent.poll() is not None:
                raise SystemExit("the agent did not connect: " + (root / "agent.log").read_text())
            time.sleep(0.05)

        added: queue.Queue[tuple[str, float]] = queue.Queue()
        ready = threading.Event()
        threading.Thread(
            target=watch_jobs, args=(cluster.kubeconfig, added, ready), daemon=True
        ).start()
        ready.wait(30)
        to_job, to_submitted, to_assigned = [], [], []
        for _ in range(runs):
            asked = time.time()
            run_id = stub.CreateRun(pb.CreateRunRequest(deployment_name="noop")).run.id
            while True:
                labelled, at = added.get(timeout=60)
                if labelled == run_id:
                    break
            to_job.append((at - asked) * 1000)
            run = stub.GetRun(pb.GetRunRequest(run_id=run_id))
            submitted = next((h for h in run.history if h.name == "Submitted"), None)
            if submitted is None:
                for message in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60):
                    if message.run.infrastructure_id:
                        break
                run = stub.GetRun(pb.GetRunRequest(run_id=run_id))
                submitted = next(h for h in run.history if h.name == "Submitted")
            to_submitted.append(millis(run.run.create_time, submitted.timestamp))
            assigned = next(h for h in run.history if h.name == "Assigned")
            to_assigned.append(millis(run.run.create_time, assigned.timestamp))
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(30)
        server.stop()
    return to_assigned, to_job, to_submitted


if __name__ == "__main__":
    main()
