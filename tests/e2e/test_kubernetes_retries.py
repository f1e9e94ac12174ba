"""Retries on Kubernetes: every attempt is a Job of its own, named after run id and attempt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.kubernetes import manifests
from flowyard.v1 import control_plane_pb2 as pb
from flowyard.v1 import types_pb2
from tests.e2e.test_kubernetes import KubeSystem, running_kube_system

FLAKY = """
import os


def main() -> str:
    attempt = int(os.environ["FLOWYARD_RUN_ATTEMPT"])
    print(f"attempt {attempt}", flush=True)
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    return "second time lucky"
"""


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeSystem]:
    with running_kube_system(tmp_path) as system:
        yield system


def test_a_failed_attempt_is_retried_as_a_new_job(kube: KubeSystem) -> None:
    kube.deploy("flaky", FLAKY)
    deployment = kube.stub.GetDeployment(pb.GetDeploymentRequest(name="flaky")).deployment
    deployment.retries = 1
    kube.stub.UpsertDeployment(pb.UpsertDeploymentRequest(deployment=deployment))
    jobs_before = kube.cluster.create_count("jobs")

    run_id = kube.create_run("flaky")
    run = kube.wait_terminal(run_id)

    assert run.state.type == types_pb2.STATE_TYPE_COMPLETED, run.state.message
    assert run.attempt == 2 and run.max_retries == 1
    assert kube.cluster.create_count("jobs") == jobs_before + 2
    names = {job["metadata"]["name"] for job in kube.cluster.jobs()}
    assert {manifests.job_name(run_id, 1), manifests.job_name(run_id, 2)} <= names
    assert run.infrastructure_id == f"default/{manifests.job_name(run_id, 2)}"
    history = kube.stub.GetRun(pb.GetRunRequest(run_id=run_id)).history
    assert [(s.attempt, s.name) for s in history if s.type == types_pb2.STATE_TYPE_FAILED] == [
        (1, "Failed")
    ]
    assert any(s.name == "AwaitingRetry" and s.attempt == 2 for s in history)
    logs = kube.logs(run_id)
    assert "attempt 1" in logs and "attempt 2" in logs
