"""The Kubernetes runtime against the in-memory API: submit, adopt, events, deadlines, cancel.

The test plays the Job controller and the kubelet: it creates the Job's pod with the status
a scenario needs and sets the Job's conditions.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.errors import ConfigurationError, KubernetesError, SubmitError
from agent.kubernetes import manifests
from agent.kubernetes.client import Resource
from agent.kubernetes.objects import POD_START_TIMEOUT_ANNOTATION
from agent.models import Assignment, InfraEvent, InfraEventKind, RunKey, RunningInfra, SecretEnv
from agent.runtimes.kubernetes import KubernetesRuntime
from agent.settings import BackoffSettings, KubernetesSettings
from tests.unit.agent.conftest import Eventually
from tests.unit.agent.fake_kube import FakeKube

Kind = InfraEventKind
RUN = "0123456789abcdef0123456789abcdef"
KEY = RunKey(RUN, 1)
JOB = f"flowyard-{RUN}-1"
SETTINGS = KubernetesSettings(
    namespace="default",
    engine_server="cp.flowyard:7700",
    watch_backoff=BackoffSettings(base=0.01, cap=0.05),
    startup_timeout=2.0,
    cancel_timeout=2.0,
)

PENDING: dict[str, Any] = {"phase": "Pending"}
RUNNING: dict[str, Any] = {
    "phase": "Running",
    "containerStatuses": [{"name": "flowyard", "state": {"running": {}}}],
}


def waiting(reason: str, message: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "flowyard", "state": {"waiting": {"reason": reason, "message": message}}}
        ],
    }


def terminated(phase: str, exit_code: int, reason: str) -> dict[str, Any]:
    return {
        "phase": phase,
        "containerStatuses": [
            {
                "name": "flowyard",
                "state": {"terminated": {"exitCode": exit_code, "reason": reason}},
            }
        ],
    }


def assignment(
    run_id: str = RUN, attempt: int = 1, token: str = "engine-token", **variables: Any
) -> Assignment:
    return Assignment(
        key=RunKey(run_id, attempt),
        deployment_name="etl",
        flow_name="main",
        base_job_template_json=json.dumps(manifests.default_template()),
        job_variables_json=json.dumps({"image": "example/flow:1", **variables}),
        engine_token=token,
    )


class Events:
    """What the runtime reports through its event callback."""

    def __init__(self) -> None:
        self.items: list[InfraEvent] = []

    def __call__(self, event: InfraEvent) -> None:
        self.items.append(event)

    def kinds(self) -> list[tuple[Kind, str]]:
        return [(e.kind, e.reason) for e in self.items]

    def ending(self) -> list[InfraEvent]:
        return [e for e in self.items if e.ends]


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def runtime(kube: FakeKube, events: Events) -> AsyncIterator[KubernetesRuntime]:
    runtime = KubernetesRuntime(SETTINGS, pool="pool-a", client=kube, environ={})
    await runtime.start(events)
    yield runtime
    await runtime.close()


async def started_runtime(kube: FakeKube, events: Events) -> KubernetesRuntime:
    runtime = KubernetesRuntime(SETTINGS, pool="pool-a", client=kube, environ={})
    await runtime.start(events)
    return runtime


async def test_submit_creates_the_secret_then_the_job_and_makes_the_job_its_owner(
    runtime: KubernetesRuntime, kube: FakeKube, eventually: Eventually
) -> None:
    infrastructure_id = await runtime.submit(assignment(pod_start_timeout_seconds=42))
    assert infrastructure_id == f"default/{JOB}"

    def writes() -> list[str]:
        return [c for c in kube.calls if c.startswith(("create", "patch"))]

    # Submitted once the Job exists: two round trips; the owner reference follows.
    assert writes() == ["create secrets default", "create jobs default"]
    await eventually(lambda: len(writes()) == 3, message="the owner reference")
    assert writes()[2] == "patch secrets default"
    job = kube.get(Resource.JOBS, JOB)
    secret = kube.get(Resource.SECRETS, JOB)
    assert job is not None and secret is not None
    assert base64.b64decode(secret["data"]["token"]) == b"engine-token"
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": JOB,
            "uid": job["metadata"]["uid"],
            "controller": False,
            "blockOwnerDeletion": True,
        }
    ]
    assert job["metadata"]["labels"][manifests.POOL_LABEL] == "pool-a"
    assert job["metadata"]["annotations"][POD_START_TIMEOUT_ANNOTATION] == "42"
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWYARD_SERVER"]["value"] == "cp.flowyard:7700"
    # Only the agent's namespace is watched, never the whole cluster: across namespaces the
    # pool's Jobs are listed once, at start, to find the namespaces to watch.
    assert {c.split()[-1] for c in kube.calls if c.startswith("watch")} == {"default"}
    assert [c for c in kube.calls if c.endswith(" *")] == ["list jobs *"]


async def test_a_namespace_nobody_chose_is_the_agents_own(
    kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    runtime = KubernetesRuntime(
        KubernetesSettings(namespace="flows", watch_backoff=SETTINGS.watch_backoff),
        pool="pool-a",
        client=kube,
        environ={},
    )
    await runtime.start(events)
    try:
        assert await runtime.submit(assignment()) == f"flows/{JOB}"
        # A deployment that names a namespace gets it (and the agent watches it too).
        other = assignment(run_id="f" * 32, namespace="team-a")
        assert await runtime.submit(other) == f"team-a/flowyard-{'f' * 32}-1"
        await eventually(lambda: "watch jobs team-a" in kube.calls, message="the new watch")
    finally:
        await runtime.close()


async def test_template_errors_are_submit_errors(
    runtime: KubernetesRuntime, kube: FakeKube
) -> None:
    with pytest.raises(SubmitError, match="'memory'"):
        await runtime.submit(assignment(memory="1Gi"))
    assert kube.creates == {}


async def test_a_refused_job_is_a_submit_error_and_leaves_no_secret(
    runtime: KubernetesRuntime, kube: FakeKube
) -> None:
    original = kube.create

    async def create(resource: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if resource is Resource.JOBS:
            raise KubernetesError(403, "Forbidden", 'jobs.batch is forbidden: User "x"')
        return await original(resource, namespace, body)

    kube.create = create  # type: ignore[method-assign]
    with pytest.raises(SubmitError, match="may not create Job default/"):
        await runtime.submit(assignment())
    assert kube.names(Resource.SECRETS) == []
    assert runtime.observe() == []


async def test_an_existing_job_is_adopted_never_duplicated(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    first = await runtime.submit(assignment(token="old"))
    await runtime.close()
    # A new agent (after a restart) gets the same attempt again, with a new token.
    runtime2 = await started_runtime(kube, events)
    try:
        assert await runtime2.submit(assignment(token="new")) == first
        assert kube.creates[Resource.JOBS] == 1
        secret = kube.get(Resource.SECRETS, JOB)
        assert secret is not None and base64.b64decode(secret["data"]["token"]) == b"new"
        # It is followed like a Job of its own.
        kube.put_pod(JOB, RUNNING)
        kube.set_job_conditions(JOB, {"type": "Complete"})
        await eventually(lambda: bool(events.ending()), message="the end")
        assert events.ending()[0].kind is Kind.SUCCEEDED
    finally:
        await runtime2.close()


async def test_each_new_diagnosis_is_reported_once_then_the_end(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment())
    kube.put_pod(JOB, PENDING)
    kube.put_pod(JOB, waiting("ContainerCreating", ""))
    kube.put_pod(JOB, waiting("ErrImagePull", "not found"))
    kube.put_pod(JOB, waiting("ImagePullBackOff", 'Back-off pulling image "x"'))
    kube.put_pod(JOB, waiting("ErrImagePull", "not found"))
    kube.put_pod(JOB, RUNNING)
    await eventually(lambda: len(events.items) == 3, message="three diagnoses")
    kube.set_job_conditions(JOB, {"type": "Complete"})
    await eventually(lambda: bool(events.ending()), message="the end")
    assert events.kinds() == [
        (Kind.PENDING, "Pending"),
        (Kind.IMAGE_PULL_ERROR, "ErrImagePull"),
        (Kind.IMAGE_PULL_ERROR, "ImagePullBackOff"),
        (Kind.SUCCEEDED, "Completed"),
    ]
    assert not any(e.gave_up for e in events.items)
    assert all(e.infrastructure_id == f"default/{JOB}" for e in events.items)
    assert runtime.observe() == []


async def test_a_failed_job_reports_the_exit_code_and_the_log_tail(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment())
    kube.logs[("default", f"{JOB}-pod")] = "\n".join(f"line {i}" for i in range(80))
    kube.put_pod(JOB, RUNNING)
    kube.put_pod(JOB, terminated("Failed", 3, "Error"))
    kube.set_job_conditions(JOB, {"type": "Failed", "reason": "BackoffLimitExceeded"})
    await eventually(lambda: bool(events.ending()), message="the end")
    [end] = events.ending()
    assert (end.kind, end.reason, end.exit_code) == (Kind.FAILED, "Error", 3)
    assert end.log_tail == tuple(f"line {i}" for i in range(30, 80))


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (terminated("Failed", 137, "OOMKilled"), Kind.OOM_KILLED, "OOMKilled"),
        (
            {"phase": "Failed", "reason": "Evicted", "message": "low on memory"},
            Kind.EVICTED,
            "Evicted",
        ),
    ],
)
async def test_oom_killed_and_evicted_pods_end_the_attempt(
    runtime: KubernetesRuntime,
    kube: FakeKube,
    events: Events,
    eventually: Eventually,
    status: dict[str, Any],
    kind: Kind,
    reason: str,
) -> None:
    await runtime.submit(assignment())
    kube.put_pod(JOB, RUNNING)
    # backoffLimit is 0: the pod's failure ends the attempt before the Job controller says so.
    kube.put_pod(JOB, status)
    await eventually(lambda: bool(events.ending()), message="the end")
    assert [(e.kind, e.reason) for e in events.ending()] == [(kind, reason)]
    kube.set_job_conditions(JOB, {"type": "Failed"})
    await asyncio.sleep(0.05)
    assert len(events.ending()) == 1


async def test_the_pod_start_deadline_deletes_the_job_and_gives_up(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment(pod_start_timeout_seconds=0.3))
    kube.put_pod(JOB, waiting("ImagePullBackOff", 'Back-off pulling image "bad/image:1"'))
    await eventually(lambda: bool(events.ending()), message="giving up")
    assert [(e.kind, e.gave_up) for e in events.items] == [
        (Kind.IMAGE_PULL_ERROR, False),
        (Kind.IMAGE_PULL_ERROR, True),
    ]
    end = events.ending()[0]
    assert end.reason == "ImagePullBackOff"
    assert end.message.startswith('Back-off pulling image "bad/image:1"')
    assert "0.3 s" in end.message
    assert kube.names(Resource.JOBS) == []
    assert kube.names(Resource.SECRETS) == []  # owned by the Job: gone with it
    await asyncio.sleep(0.05)
    assert len(events.ending()) == 1  # the Job's deletion is not reported again


async def test_unschedulable_pods_give_up_with_the_schedulers_message(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment(pod_start_timeout_seconds=0.2))
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
    }
    kube.put_pod(JOB, {"phase": "Pending", "conditions": [condition]})
    await eventually(lambda: bool(events.ending()), message="giving up")
    end = events.ending()[0]
    assert (end.kind, end.reason, end.gave_up) == (Kind.UNSCHEDULABLE, "Unschedulable", True)
    assert "Insufficient cpu" in end.message


async def test_a_job_without_any_pod_gives_up_too(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment(pod_start_timeout_seconds=0.2))
    await eventually(lambda: bool(events.ending()), message="giving up")
    end = events.ending()[0]
    assert (end.kind, end.reason, end.gave_up) == (Kind.PENDING, "PodStartTimeout", True)


async def test_a_started_pod_is_not_subject_to_the_deadline(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events
) -> None:
    await runtime.submit(assignment(pod_start_timeout_seconds=0.2))
    kube.put_pod(JOB, RUNNING)
    await asyncio.sleep(0.4)
    assert events.ending() == []
    assert kube.names(Resource.JOBS) == [JOB]


async def test_cancel_deletes_the_job_and_waits_until_it_is_gone(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events
) -> None:
    await runtime.submit(assignment())
    kube.put_pod(JOB, RUNNING)
    assert await runtime.cancel(KEY) is True
    assert kube.names(Resource.JOBS) == []
    assert kube.names(Resource.PODS) == []
    assert kube.names(Resource.SECRETS) == []
    [end] = events.ending()
    assert (end.kind, end.reason) == (Kind.DELETED, "Deleted")
    assert "by the agent" in end.message


async def test_a_pod_stopped_by_the_cancel_ends_deleted_not_failed(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    await runtime.submit(assignment())
    kube.put_pod(JOB, RUNNING)
    delete = kube.delete

    async def sigterm_first(resource: Resource, namespace: str, name: str) -> bool:
        if resource is Resource.JOBS:
            # As on a real cluster: the container exits with 143 and the Job fails before the
            # Job itself is gone, and the watch delivers that first.
            kube.put_pod(JOB, terminated("Failed", 143, "Error"))
            kube.set_job_conditions(JOB, {"type": "Failed", "reason": "BackoffLimitExceeded"})
            for _ in range(50):
                await asyncio.sleep(0)
        return await delete(resource, namespace, name)

    monkeypatch.setattr(kube, "delete", sigterm_first)
    assert await runtime.cancel(KEY) is True
    [end] = events.ending()
    assert (end.kind, end.reason) == (Kind.DELETED, "Deleted")
    assert "by the agent" in end.message


async def test_cancel_of_an_attempt_not_tracked_deletes_a_leftover_job(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events
) -> None:
    assert await runtime.cancel(RunKey("f" * 32, 1)) is False
    leftover = f"flowyard-{'e' * 32}-2"
    await kube.create(Resource.JOBS, "default", {"metadata": {"name": leftover}})
    assert await runtime.cancel(RunKey("e" * 32, 2)) is True
    assert kube.names(Resource.JOBS) == []
    assert events.items == []  # nobody holds it: nothing to report


async def test_a_job_deleted_by_someone_else_is_reported_deleted(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment())
    kube.put_pod(JOB, RUNNING)
    kube.remove(Resource.JOBS, "default", JOB)
    await eventually(lambda: bool(events.ending()), message="the deletion")
    end = events.ending()[0]
    assert (end.kind, end.reason) == (Kind.DELETED, "Deleted")
    assert "someone else" in end.message


async def test_a_job_deleted_while_the_watch_was_down_is_found_by_the_relist(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment())
    kube.put_pod(JOB, RUNNING)
    await eventually(lambda: kube.open_watches == 2, message="both watches")
    await asyncio.sleep(0.05)  # let the watches catch up with the pod
    kube.failures["watch"].extend([KubernetesError(0, "ConnectionError", "refused")] * 2)
    kube.drop_watches()
    kube.remove(Resource.JOBS, "default", JOB)
    kube.compact()
    await eventually(lambda: bool(events.ending()), message="the deletion")
    assert [(e.kind, e.reason) for e in events.ending()] == [(Kind.DELETED, "Deleted")]
    assert kube.calls.count("list jobs default") == 2


async def test_an_end_during_a_watch_outage_is_reported_after_the_relist(
    runtime: KubernetesRuntime, kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    await runtime.submit(assignment())
    kube.put_pod(JOB, RUNNING)
    await eventually(lambda: kube.open_watches == 2, message="both watches")
    kube.drop_watches()
    kube.put_pod(JOB, terminated("Succeeded", 0, "Completed"))
    kube.set_job_conditions(JOB, {"type": "Complete"})
    kube.compact()
    await eventually(lambda: bool(events.ending()), message="the end")
    assert [e.kind for e in events.ending()] == [Kind.SUCCEEDED]


async def test_after_a_restart_running_jobs_are_observed_and_followed(
    kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    first = await started_runtime(kube, events)
    await first.submit(assignment())
    other = "a" * 32
    await first.submit(assignment(run_id=other))
    kube.put_pod(JOB, RUNNING)
    kube.set_job_conditions(f"flowyard-{other}-1", {"type": "Complete"})
    await eventually(lambda: len(events.ending()) == 1, message="the other run's end")
    await first.close()
    events.items.clear()

    second = await started_runtime(kube, events)
    try:
        # The finished Job is not observed; the running one is, and from now on followed.
        assert second.observe() == [RunningInfra(KEY, f"default/{JOB}")]
        kube.put_pod(JOB, terminated("Failed", 2, "Error"))
        await eventually(lambda: bool(events.ending()), message="the adopted run's end")
        assert [(e.key, e.kind, e.exit_code) for e in events.ending()] == [(KEY, Kind.FAILED, 2)]
    finally:
        await second.close()


async def test_an_adopted_job_keeps_its_pod_start_deadline(
    kube: FakeKube, events: Events, eventually: Eventually
) -> None:
    first = await started_runtime(kube, events)
    await first.submit(assignment(pod_start_timeout_seconds=0.3))
    await first.close()
    second = await started_runtime(kube, events)
    try:
        assert second.observe() == [RunningInfra(KEY, f"default/{JOB}")]
        await eventually(lambda: bool(events.ending()), message="giving up")
        assert events.ending()[0].gave_up
        assert kube.names(Resource.JOBS) == []
    finally:
        await second.close()


async def test_close_leaves_jobs_running(runtime: KubernetesRuntime, kube: FakeKube) -> None:
    await runtime.submit(assignment())
    await runtime.close()
    assert kube.names(Resource.JOBS) == [JOB]
    assert kube.closed


async def test_start_fails_clearly_without_permission(kube: FakeKube, events: Events) -> None:
    kube.failures["list"].extend([KubernetesError(403, "Forbidden", "no")] * 50)
    runtime = KubernetesRuntime(SETTINGS, pool="pool-a", client=kube, environ={})
    with pytest.raises(ConfigurationError, match="credentials and Role"):
        await runtime.start(events)


async def test_git_credentials_come_from_the_named_secret(
    runtime: KubernetesRuntime, kube: FakeKube
) -> None:
    with_secret = dataclasses.replace(
        assignment(), secret_env=(SecretEnv("REPO_TOKEN", "git-credentials", "token"),)
    )
    await runtime.submit(with_secret)
    job = kube.get(Resource.JOBS, JOB)
    assert job is not None
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REPO_TOKEN"] == {
        "name": "REPO_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "git-credentials", "key": "token"}},
    }
