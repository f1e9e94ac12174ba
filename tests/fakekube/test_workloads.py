"""Jobs run by the fake controllers and kubelet, observed through the official client."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fakekube import FakeCluster
from tests.fakekube.testing import pid_alive, python_job, wait_for

SLEEP = "import time; time.sleep(60)"


def job_pods(core: client.CoreV1Api, job: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod("default", label_selector=f"job-name={job}").items)


def only_pod(core: client.CoreV1Api, job: str) -> client.V1Pod | None:
    pods = job_pods(core, job)
    return pods[0] if len(pods) == 1 else None


def condition(batch: client.BatchV1Api, job: str, kind: str) -> client.V1JobCondition | None:
    conditions = batch.read_namespaced_job_status(job, "default").status.conditions or []
    return next((c for c in conditions if c.type == kind and c.status == "True"), None)


def waiting_reason(core: client.CoreV1Api, job: str) -> str | None:
    pod = only_pod(core, job)
    statuses = pod.status.container_statuses if pod else None
    return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None


def reasons(cluster: FakeCluster) -> set[str]:
    return {event["reason"] for event in cluster.events()}


def test_job_completes_and_its_log_says_hi(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    batch.create_namespaced_job("default", python_job("hi", "print('hi')"))

    complete = wait_for(lambda: condition(batch, "hi", "Complete"), what="the job to complete")
    job = batch.read_namespaced_job("hi", "default")
    pod = only_pod(core, "hi")

    assert complete.reason == "CompletionsReached"
    assert job.status.succeeded == 1 and not job.status.active
    assert job.status.start_time and job.status.completion_time
    assert pod is not None and pod.status.phase == "Succeeded"
    assert pod.metadata.owner_references[0].uid == job.metadata.uid
    assert pod.metadata.labels["controller-uid"] == job.metadata.uid
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert core.read_namespaced_pod_log(pod.metadata.name, "default") == "hi\n"
    assert {"SuccessfulCreate", "Scheduled", "Started", "Completed"} <= reasons(cluster)


def test_follow_streams_the_log_while_the_process_runs(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    code = "import time\nfor i in range(4):\n    print('line', i, flush=True)\n    time.sleep(0.3)"
    batch.create_namespaced_job("default", python_job("slow", code))
    pod = wait_for(
        lambda: (p := only_pod(core, "slow")) and p.status.phase == "Running" and p,
        what="the pod to run",
    )

    response = core.read_namespaced_pod_log(
        pod.metadata.name, "default", follow=True, _preload_content=False
    )
    received = b""
    phases_while_streaming = set()
    for chunk in response.stream(amt=None, decode_content=False):
        received += chunk
        phases_while_streaming.add(
            core.read_namespaced_pod(pod.metadata.name, "default").status.phase
        )
    response.release_conn()

    assert received.decode().splitlines() == [f"line {i}" for i in range(4)]
    assert "Running" in phases_while_streaming
    tail = core.read_namespaced_pod_log(pod.metadata.name, "default", tail_lines=1)
    assert tail == "line 3\n"


def test_env_from_a_secret_reaches_the_process(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    core.create_namespaced_secret(
        "default", {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "GREETING", "value": "token=$(TOKEN)"},
    ]
    code = "import os; print(os.environ['GREETING'], os.environ['HOSTNAME'])"
    batch.create_namespaced_job("default", python_job("env", code, env=env))

    wait_for(lambda: condition(batch, "env", "Complete"), what="the job to complete")
    pod = only_pod(core, "env")

    assert pod is not None
    log = core.read_namespaced_pod_log(pod.metadata.name, "default")
    assert log == f"token=s3cret {pod.metadata.name}\n"


def test_missing_secret_is_create_container_config_error_until_created(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    batch.create_namespaced_job(
        "default", python_job("late", "import os; print(os.environ['TOKEN'])", env=env)
    )

    wait_for(
        lambda: waiting_reason(core, "late") == "CreateContainerConfigError", what="config error"
    )
    pod = only_pod(core, "late")
    assert pod is not None
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "late" not found'
    assert cluster.pod_pids() == []
    with pytest.raises(ApiException) as raised:
        core.read_namespaced_pod_log(pod.metadata.name, "default")
    assert raised.value.status == 400

    core.create_namespaced_secret(
        "default", {"metadata": {"name": "late"}, "stringData": {"token": "ok"}}
    )

    wait_for(lambda: condition(batch, "late", "Complete"), what="the job to complete")
    assert core.read_namespaced_pod_log(pod.metadata.name, "default") == "ok\n"


def test_exit_137_is_oom_killed(batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    batch.create_namespaced_job(
        "default", python_job("oom", "import os; os._exit(137)", backoffLimit=0)
    )

    wait_for(lambda: condition(batch, "oom", "Failed"), what="the job to fail")
    pod = only_pod(core, "oom")

    assert pod is not None and pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_failing_image_never_starts(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    image = "registry.example/bad-image:1"
    batch.create_namespaced_job("default", python_job("pull", "print('no')", image=image))

    wait_for(lambda: waiting_reason(core, "pull") == "ErrImagePull", what="ErrImagePull")
    pod = only_pod(core, "pull")
    assert pod is not None
    message = pod.status.container_statuses[0].state.waiting.message
    assert message == (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
        f'failed to resolve reference "{image}": {image}: not found'
    )
    wait_for(lambda: waiting_reason(core, "pull") == "ImagePullBackOff", what="ImagePullBackOff")
    wait_for(lambda: waiting_reason(core, "pull") == "ErrImagePull", what="ErrImagePull again")

    assert cluster.pod_pids() == []
    assert {"Pulling", "Failed", "BackOff"} <= reasons(cluster)
    with pytest.raises(ApiException) as raised:
        core.read_namespaced_pod_log(pod.metadata.name, "default")
    assert "image can't be pulled" in raised.value.body


def test_an_unreachable_registry_fails_the_pull_with_a_timeout(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    batch.create_namespaced_job(
        "default", python_job("slow", "print('no')", image="unreachable/flows:1")
    )
    wait_for(lambda: waiting_reason(core, "slow") == "ErrImagePull", what="ErrImagePull")
    pod = only_pod(core, "slow")
    assert pod is not None
    message = pod.status.container_statuses[0].state.waiting.message
    assert message.startswith(
        "rpc error: code = Unknown desc = failed to pull and unpack image "
        '"docker.io/unreachable/flows:1"'
    )
    assert message.endswith("i/o timeout")


def test_an_image_name_that_does_not_parse_waits_in_invalid_image_name(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    batch.create_namespaced_job("default", python_job("invalid", "print('no')", image="Team/X:1"))
    wait_for(lambda: waiting_reason(core, "invalid") == "InvalidImageName", what="InvalidImageName")
    pod = only_pod(core, "invalid")
    assert pod is not None
    assert pod.status.container_statuses[0].state.waiting.message == (
        'Failed to apply default image tag "Team/X:1": couldn\'t parse image name "Team/X:1": '
        "invalid reference format: repository name must be lowercase"
    )
    assert "InspectFailed" in reasons(cluster)
    assert cluster.pod_pids() == []


def test_huge_cpu_request_is_unschedulable(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    resources = {"requests": {"cpu": "64", "memory": "512Mi"}}
    batch.create_namespaced_job("default", python_job("big", "pass", resources=resources))

    def unschedulable() -> Any:
        pod = only_pod(core, "big")
        conditions = (pod.status.conditions or []) if pod else []
        return next((c for c in conditions if c.reason == "Unschedulable"), None)

    scheduled = wait_for(unschedulable, what="the pod to be unschedulable")

    assert scheduled.type == "PodScheduled" and scheduled.status == "False"
    assert scheduled.message.startswith("0/1 nodes are available: 1 Insufficient cpu.")
    assert "FailedScheduling" in reasons(cluster)
    pod = only_pod(core, "big")
    assert pod is not None and pod.status.phase == "Pending" and not pod.spec.node_name


def test_backoff_limit_replaces_failed_pods_then_fails_the_job(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    batch.create_namespaced_job(
        "default", python_job("flaky", "raise SystemExit(3)", backoffLimit=1)
    )

    failed = wait_for(lambda: condition(batch, "flaky", "Failed"), what="the job to fail")
    job = batch.read_namespaced_job("flaky", "default")

    assert failed.reason == "BackoffLimitExceeded"
    assert job.status.failed == 2
    assert cluster.create_count("pods") == 2
    pods = job_pods(core, "flaky")
    assert len(pods) == 2
    assert {p.status.container_statuses[0].state.terminated.exit_code for p in pods} == {3}
    assert {p.status.container_statuses[0].state.terminated.reason for p in pods} == {"Error"}


def test_delete_job_kills_the_sleeping_process(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    batch.create_namespaced_job("default", python_job("sleeper", SLEEP))
    [pid] = wait_for(cluster.pod_pids, what="the process to start")
    assert pid_alive(pid)

    cluster.delete_job("sleeper")

    wait_for(lambda: not pid_alive(pid), what="the process to die")
    wait_for(lambda: not cluster.pods(), what="the pod to go")
    assert "Killing" in reasons(cluster)


def test_evicted_pod_is_failed_and_replaced(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    batch.create_namespaced_job("default", python_job("evictee", SLEEP))
    [pid] = wait_for(cluster.pod_pids, what="the process to start")
    pod = only_pod(core, "evictee")
    assert pod is not None

    cluster.evict_pod(pod.metadata.name)

    assert not pid_alive(pid)
    evicted = core.read_namespaced_pod(pod.metadata.name, "default")
    assert evicted.status.phase == "Failed"
    assert evicted.status.reason == "Evicted"
    assert evicted.status.message == "The node was low on resource: memory."
    assert any(c.type == "DisruptionTarget" for c in evicted.status.conditions)
    wait_for(lambda: len(job_pods(core, "evictee")) == 2, what="a replacement pod")
    wait_for(
        lambda: batch.read_namespaced_job("evictee", "default").status.failed == 1,
        what="the failure to count",
    )
