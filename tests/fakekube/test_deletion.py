"""Deletion as the registry and garbage collector do it: propagation policies, graceful pods."""

from __future__ import annotations

from typing import Any

from kubernetes import client, watch

from tests.fakekube import FakeCluster
from tests.fakekube.testing import pid_alive, python_job, wait_for

SLEEP = "import time; time.sleep(60)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def running_job(
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    cluster: FakeCluster,
    name: str,
    code: str = SLEEP,
) -> tuple[client.V1Job, client.V1Pod]:
    """A Job whose pod is running a sleeping process, plus a Secret the Job owns."""
    manifest = python_job(name, code)
    manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 1
    job = batch.create_namespaced_job("default", manifest)
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": job.metadata.uid,
    }
    core.create_namespaced_secret(
        "default",
        {"metadata": {"name": f"{name}-env", "ownerReferences": [owner]}, "stringData": {"k": "v"}},
    )

    def running_pod() -> client.V1Pod | None:
        pods = core.list_namespaced_pod("default", label_selector=f"job-name={name}").items
        return next((p for p in pods if p.status.phase == "Running"), None)

    return job, wait_for(running_pod, what="the job's pod to run")


def test_background_delete_removes_owned_pods_and_secrets(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    running_job(batch, core, cluster, "bg")
    [pid] = cluster.pod_pids()

    status = batch.delete_namespaced_job("bg", "default", propagation_policy="Background")

    # The client declares this response as a plain object: a Status once the Job is gone.
    assert status["kind"] == "Status"
    assert status["status"] == "Success"
    assert status["details"]["kind"] == "jobs"
    assert cluster.jobs() == []
    wait_for(lambda: not cluster.pods() and not cluster.secrets(), what="dependents to go")
    assert not pid_alive(pid)


def test_orphan_delete_leaves_pods_and_secrets_without_owner(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    job, pod = running_job(batch, core, cluster, "orphaned")

    # While its "orphan" finalizer holds it, the answer is the Job itself, not a Status.
    body = batch.delete_namespaced_job("orphaned", "default", propagation_policy="Orphan")

    assert body["kind"] == "Job"
    assert body["metadata"]["uid"] == job.metadata.uid
    assert "orphan" in body["metadata"]["finalizers"]
    wait_for(lambda: not cluster.jobs(), what="the job to go")
    [left] = cluster.pods()
    assert left["metadata"]["name"] == pod.metadata.name
    assert "ownerReferences" not in left["metadata"]
    assert [s["metadata"]["name"] for s in cluster.secrets()] == ["orphaned-env"]
    assert left["status"]["phase"] == "Running"


def test_foreground_delete_removes_the_job_after_its_pods(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    # The process ignores SIGTERM, so its pod (and so the Job) lingers for the grace period.
    running_job(batch, core, cluster, "fg", STUBBORN)
    [pid] = cluster.pod_pids()
    since = core.list_namespaced_pod("default").metadata.resource_version

    body = batch.delete_namespaced_job("fg", "default", propagation_policy="Foreground")

    # The answer is the Job as the deletion left it (read from the answer, not read again:
    # on a busy machine the pod's grace period can end, and the Job go, before a new read).
    assert body["kind"] == "Job"
    assert body["metadata"]["deletionTimestamp"] is not None
    assert body["metadata"]["finalizers"] == ["foregroundDeletion"]
    wait_for(lambda: not cluster.jobs(), what="the job to go after its pods")
    assert cluster.pods() == []
    assert not pid_alive(pid)
    # The order, from the change log rather than from a look at the right moment (on a busy
    # machine the pod may be gone before a test looks): the pod was terminating, then
    # deleted, and only then the Job.
    pods = changes_until_deleted(core.list_namespaced_pod, since)
    jobs = changes_until_deleted(batch.list_namespaced_job, since)
    assert any(kind == "MODIFIED" and obj.metadata.deletion_timestamp for kind, _, obj in pods)
    assert pods[-1][1] < jobs[-1][1], "the job went before its pod"


def changes_until_deleted(list_objects: Any, since: str) -> list[tuple[str, int, Any]]:
    """(type, resource version, object) of each change after ``since``, up to the first
    DELETED one: replayed from the watch history, so it does not matter when we look."""
    seen: list[tuple[str, int, Any]] = []
    # A read deadline rather than the watch's timeoutSeconds: on a busy machine the server
    # could reach that before it replays anything.
    for event in watch.Watch().stream(
        list_objects, "default", resource_version=since, _request_timeout=30
    ):
        obj = event["object"]
        seen.append((event["type"], int(obj.metadata.resource_version), obj))
        if event["type"] == "DELETED":
            return seen
    raise AssertionError(f"the watch ended without a deletion: {[t for t, _, _ in seen]}")


def test_delete_without_policy_orphans_and_warns(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    running_job(batch, core, cluster, "legacy")

    raw = batch.delete_namespaced_job("legacy", "default", _preload_content=False)

    assert "child pods are preserved by default" in raw.headers["Warning"]
    wait_for(lambda: not cluster.jobs(), what="the job to go")
    assert len(cluster.pods()) == 1


def test_pod_delete_is_graceful_and_returns_the_pod(
    batch: client.BatchV1Api, core: client.CoreV1Api, cluster: FakeCluster
) -> None:
    _, pod = running_job(batch, core, cluster, "graceful")

    deleted = core.delete_namespaced_pod(pod.metadata.name, "default")

    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 1
    wait_for(
        lambda: pod.metadata.name not in [p["metadata"]["name"] for p in cluster.pods()],
        what="the pod to be removed once its process ended",
    )
