"""The Kubernetes runtime with the official client against the fake cluster (HTTP, real watches).

The fake kubelet runs each pod's command as a local process; ``flowyard-engine`` is a script on
PATH whose behaviour is picked by the run id's first word: ``exit<N>`` prints its environment and
exits with N, ``sleep`` sleeps, ``gate`` exits 0 once the file named by FAKE_ENGINE_GATE exists,
``oom`` kills itself with SIGKILL (the kubelet reports OOMKilled).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.kubernetes import manifests
from agent.models import Assignment, InfraEvent, InfraEventKind, RunKey, RunningInfra
from agent.runtimes.kubernetes import KubernetesRuntime
from agent.settings import BackoffSettings, KubernetesSettings
from tests.fakekube import FakeCluster

Kind = InfraEventKind

ENGINE = textwrap.dedent(
    """\
    #!{python}
    import os, sys, time

    run_id = sys.argv[-1]
    mode = run_id.split("-")[0]
    print("token=" + os.environ.get("FLOWYARD_RUN_TOKEN", ""))
    print("server=" + os.environ.get("FLOWYARD_SERVER", ""), flush=True)
    if "FLOWYARD_TLS_CA_PEM" in os.environ:
        print("ca=" + os.environ["FLOWYARD_TLS_CA_PEM"].splitlines()[1], flush=True)
    if mode.startswith("exit"):
        print("engine output", flush=True)
        sys.exit(int(mode[4:]))
    elif mode == "sleep":
        time.sleep(300)
    elif mode == "gate":
        while not os.path.exists(os.environ["FAKE_ENGINE_GATE"]):
            time.sleep(0.02)
    elif mode == "oom":
        os.kill(os.getpid(), 9)
    """
)


class Events:
    def __init__(self) -> None:
        self.items: list[InfraEvent] = []

    def __call__(self, event: InfraEvent) -> None:
        self.items.append(event)

    def end_of(self, key: RunKey) -> InfraEvent | None:
        return next((e for e in self.items if e.key == key and e.ends), None)


async def until(condition: Any, within: float = 15.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def assignment(run_id: str, token: str = "engine-token", **variables: Any) -> Assignment:
    return Assignment(
        key=RunKey(run_id, 1),
        deployment_name="etl",
        flow_name="main",
        base_job_template_json=json.dumps(manifests.default_template()),
        job_variables_json=json.dumps({"image": "example/flow:1", **variables}),
        engine_token=token,
    )


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    engine = bin_dir / "flowyard-engine"
    engine.write_text(ENGINE.format(python=sys.executable))
    engine.chmod(0o755)
    # The fake kubelet starts pods with this process's environment.
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ENGINE_GATE", str(tmp_path / "release"))
    with FakeCluster(tmp_path / "cluster") as running:
        yield running


@pytest.fixture
def settings(cluster: FakeCluster) -> KubernetesSettings:
    return KubernetesSettings(
        kubeconfig=str(cluster.kubeconfig),
        namespace="default",
        engine_server="cp.example:7700",
        watch_backoff=BackoffSettings(base=0.05, cap=0.5),
        cancel_timeout=15.0,
    )


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def runtime(settings: KubernetesSettings, events: Events) -> AsyncIterator[KubernetesRuntime]:
    runtime = KubernetesRuntime(settings, pool="it-pool")
    await runtime.start(events)
    yield runtime
    await runtime.close()


async def test_a_run_succeeds_and_its_secret_belongs_to_its_job(
    runtime: KubernetesRuntime, cluster: FakeCluster, events: Events
) -> None:
    key = RunKey("exit0-a", 1)
    assert await runtime.submit(assignment("exit0-a")) == "default/flowyard-exit0-a-1"
    end = await until(lambda: events.end_of(key), what="the end")
    assert (end.kind, end.reason, end.exit_code) == (Kind.SUCCEEDED, "Completed", 0)
    [job] = cluster.jobs()
    [secret] = cluster.secrets()
    assert secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]


async def test_a_failed_run_reports_exit_code_and_log_tail(
    runtime: KubernetesRuntime, events: Events
) -> None:
    key = RunKey("exit3-b", 1)
    await runtime.submit(assignment("exit3-b"))
    end = await until(lambda: events.end_of(key), what="the end")
    assert (end.kind, end.exit_code) == (Kind.FAILED, 3)
    # The engine got its token from the Secret and the address engines use.
    assert end.log_tail == ("token=engine-token", "server=cp.example:7700", "engine output")


async def test_with_tls_the_engine_gets_the_ca_from_the_attempts_secret(
    settings: KubernetesSettings, cluster: FakeCluster, events: Events
) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIBtestca\n-----END CERTIFICATE-----\n"
    runtime = KubernetesRuntime(dataclasses.replace(settings, engine_tls_ca=pem), pool="it-pool")
    await runtime.start(events)
    try:
        key = RunKey("exit3-tls", 1)
        await runtime.submit(assignment("exit3-tls"))
        end = await until(lambda: events.end_of(key), what="the end")
        assert end.log_tail == (
            "token=engine-token",
            "server=cp.example:7700",
            "ca=MIIBtestca",
            "engine output",
        )
        # The CA travels in the Secret, like the token, never as a literal in the Job.
        [job] = cluster.jobs()
        assert "MIIBtestca" not in json.dumps(job)
    finally:
        await runtime.close()


async def test_an_image_that_cannot_be_pulled_gives_up_at_the_deadline(
    runtime: KubernetesRuntime, cluster: FakeCluster, events: Events
) -> None:
    key = RunKey("exit0-c", 1)
    await runtime.submit(assignment("exit0-c", image="bad/image:1", pod_start_timeout_seconds=2))
    end = await until(lambda: events.end_of(key), what="giving up")
    assert end.gave_up and end.kind is Kind.IMAGE_PULL_ERROR
    assert end.reason in ("ErrImagePull", "ImagePullBackOff")
    assert "bad/image:1" in end.message
    # Seen before the deadline too, as a non-ending event.
    assert any(e.kind is Kind.IMAGE_PULL_ERROR and not e.ends for e in events.items)
    await until(lambda: not cluster.jobs() and not cluster.secrets(), what="the Job deleted")


async def test_cancel_deletes_the_job(
    runtime: KubernetesRuntime, cluster: FakeCluster, events: Events
) -> None:
    key = RunKey("sleep-d", 1)
    await runtime.submit(assignment("sleep-d"))
    await until(
        lambda: any(p["status"].get("phase") == "Running" for p in cluster.pods()),
        what="the pod running",
    )
    assert await runtime.cancel(key) is True
    assert cluster.jobs() == []
    end = await until(lambda: events.end_of(key), what="the end after the cancel")
    assert end is not None and end.kind is Kind.DELETED
    await until(lambda: not cluster.pods(), what="the pod gone")


async def test_a_second_submission_adopts_the_job(
    settings: KubernetesSettings, cluster: FakeCluster, events: Events
) -> None:
    key = RunKey("sleep-e", 1)
    first = KubernetesRuntime(settings, pool="it-pool")
    await first.start(events)
    infrastructure_id = await first.submit(assignment("sleep-e", token="old"))
    await first.close()
    second = KubernetesRuntime(settings, pool="it-pool")
    await second.start(events)
    try:
        assert second.observe() == [RunningInfra(key, infrastructure_id)]
        assert await second.submit(assignment("sleep-e", token="new")) == infrastructure_id
        assert cluster.create_count("jobs") == 1
        assert await second.cancel(key) is True
    finally:
        await second.close()


async def test_no_event_is_lost_across_compaction_and_dropped_watches(
    runtime: KubernetesRuntime, cluster: FakeCluster, events: Events, tmp_path: Path
) -> None:
    key = RunKey("gate-f", 1)
    await runtime.submit(assignment("gate-f"))
    await until(lambda: cluster.open_watches() >= 2, what="the watches")
    cluster.faults.compact()
    cluster.faults.drop_watches()
    (tmp_path / "release").touch()
    end = await until(lambda: events.end_of(key), what="the end")
    assert end.kind is Kind.SUCCEEDED


async def test_oom_killed_and_evicted(
    runtime: KubernetesRuntime, cluster: FakeCluster, events: Events
) -> None:
    oom = RunKey("oom-g", 1)
    await runtime.submit(assignment("oom-g"))
    end = await until(lambda: events.end_of(oom), what="the OOM kill")
    assert (end.kind, end.exit_code) == (Kind.OOM_KILLED, 137)

    evicted = RunKey("sleep-h", 1)
    await runtime.submit(assignment("sleep-h"))
    pod = await until(
        lambda: next(
            (
                p
                for p in cluster.pods()
                if p["metadata"]["labels"].get("job-name") == "flowyard-sleep-h-1"
                and p["status"].get("phase") == "Running"
            ),
            None,
        ),
        what="the pod running",
    )
    cluster.evict_pod(pod["metadata"]["name"])
    end = await until(lambda: events.end_of(evicted), what="the eviction")
    assert end.kind is Kind.EVICTED


@pytest.mark.parametrize("propagation", ["Orphan", None], ids=["orphan", "batch-v1-default"])
async def test_a_job_deleted_without_its_pods_has_its_pods_stopped(
    runtime: KubernetesRuntime, cluster: FakeCluster, events: Events, propagation: str | None
) -> None:
    key = RunKey("sleep-orphan", 1)
    await runtime.submit(assignment("sleep-orphan"))
    await until(
        lambda: any(p["status"].get("phase") == "Running" for p in cluster.pods()),
        what="the pod running",
    )
    pids = cluster.pod_pids()
    cluster.delete_job("flowyard-sleep-orphan-1", propagation=propagation)
    end = await until(lambda: events.end_of(key), what="the end")
    assert end.kind is Kind.DELETED and "by someone else" in end.message
    # The pod kept running the flow after its Job went; the agent stops it.
    await until(lambda: not cluster.pods(), what="the orphaned pod deleted")
    assert all(not _alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no longer runs anything; the kubelet reaps it.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


@pytest.mark.parametrize(
    ("image", "reason", "words"),
    [
        ("bad/image:1", "ErrImagePull", "docker.io/bad/image:1: not found"),
        ("example/Flow:1", "InvalidImageName", "repository name must be lowercase"),
    ],
    ids=["missing", "invalid"],
)
async def test_an_image_that_will_never_pull_ends_the_run_long_before_the_deadline(
    settings: KubernetesSettings,
    cluster: FakeCluster,
    events: Events,
    image: str,
    reason: str,
    words: str,
) -> None:
    runtime = KubernetesRuntime(
        dataclasses.replace(settings, unpullable_image_grace=1.0), pool="it-pool"
    )
    await runtime.start(events)
    try:
        key = RunKey("exit0-unpullable", 1)
        # The default pod-start timeout (300 s) stays: only the pull error's nature shortens it.
        await runtime.submit(assignment("exit0-unpullable", image=image))
        end = await until(lambda: events.end_of(key), within=10.0, what="giving up")
        assert end.gave_up and end.kind is Kind.IMAGE_PULL_ERROR and end.reason == reason
        assert image in end.message and words in end.message
        assert "retrying cannot fix" in end.message
        await until(lambda: not cluster.jobs(), what="the Job deleted")
    finally:
        await runtime.close()


async def test_a_pull_error_that_may_heal_keeps_the_whole_deadline(
    settings: KubernetesSettings, cluster: FakeCluster, events: Events
) -> None:
    runtime = KubernetesRuntime(
        dataclasses.replace(settings, unpullable_image_grace=0.5), pool="it-pool"
    )
    await runtime.start(events)
    try:
        key = RunKey("exit0-slow-registry", 1)
        loop = asyncio.get_running_loop()
        submitted = loop.time()
        await runtime.submit(
            assignment(
                "exit0-slow-registry", image="unreachable/flow:1", pod_start_timeout_seconds=4
            )
        )
        end = await until(lambda: events.end_of(key), within=15.0, what="giving up")
        assert loop.time() - submitted >= 3.5
        assert end.gave_up and end.kind is Kind.IMAGE_PULL_ERROR
        assert "no container started within 4 s" in end.message
    finally:
        await runtime.close()


async def test_a_restarted_runtime_finds_its_jobs_in_other_namespaces(
    settings: KubernetesSettings, cluster: FakeCluster, events: Events
) -> None:
    key = RunKey("sleep-elsewhere", 1)
    first = KubernetesRuntime(settings, pool="it-pool")
    await first.start(events)
    infrastructure_id = await first.submit(assignment("sleep-elsewhere", namespace="team-a"))
    assert infrastructure_id == "team-a/flowyard-sleep-elsewhere-1"
    await first.close()

    second = KubernetesRuntime(settings, pool="it-pool")
    await second.start(events)
    try:
        # Found by the cluster-wide list of the pool's Jobs, and watched from now on.
        assert second.observe() == [RunningInfra(key, infrastructure_id)]
        await until(
            lambda: any(p["status"].get("phase") == "Running" for p in cluster.pods("team-a")),
            what="the pod running",
        )
        [pod] = cluster.pods("team-a")
        cluster.evict_pod(pod["metadata"]["name"], namespace="team-a")
        end = await until(lambda: events.end_of(key), what="the end seen by the new runtime")
        assert end.kind is Kind.EVICTED
    finally:
        await second.close()


async def test_without_a_cluster_wide_list_the_named_namespaces_are_watched(
    settings: KubernetesSettings, cluster: FakeCluster, events: Events
) -> None:
    cluster.faults.deny_cluster_scope()
    first = KubernetesRuntime(settings, pool="it-pool")
    await first.start(events)  # a 403 there is no reason to stop
    infrastructure_id = await first.submit(assignment("sleep-named", namespace="team-b"))
    await first.close()

    second = KubernetesRuntime(
        dataclasses.replace(settings, watch_namespaces=("team-b",)), pool="it-pool"
    )
    await second.start(events)
    try:
        assert second.observe() == [RunningInfra(RunKey("sleep-named", 1), infrastructure_id)]
        assert await second.cancel(RunKey("sleep-named", 1)) is True
    finally:
        await second.close()


async def test_pods_orphaned_while_no_agent_watched_are_stopped_at_start(
    settings: KubernetesSettings, cluster: FakeCluster, events: Events
) -> None:
    first = KubernetesRuntime(settings, pool="it-pool")
    await first.start(events)
    await first.submit(assignment("sleep-orphaned-away"))
    await until(
        lambda: any(p["status"].get("phase") == "Running" for p in cluster.pods()),
        what="the pod running",
    )
    await first.close()
    cluster.delete_job("flowyard-sleep-orphaned-away-1", propagation="Orphan")
    await until(
        lambda: not cluster.jobs() and not cluster.pods()[0]["metadata"].get("ownerReferences"),
        what="the Job gone, its pod left without an owner",
    )

    second = KubernetesRuntime(settings, pool="it-pool")
    await second.start(events)
    try:
        await until(lambda: not cluster.pods(), what="the orphaned pod deleted")
    finally:
        await second.close()


async def test_a_pending_pod_in_another_namespace_keeps_its_deadline_across_a_restart(
    settings: KubernetesSettings, cluster: FakeCluster, events: Events
) -> None:
    key = RunKey("exit0-stuck-elsewhere", 1)
    first = KubernetesRuntime(settings, pool="it-pool")
    await first.start(events)
    await first.submit(
        assignment(
            "exit0-stuck-elsewhere",
            image="unreachable/flow:1",
            namespace="team-c",
            pod_start_timeout_seconds=3,
        )
    )
    await first.close()

    second = KubernetesRuntime(settings, pool="it-pool")
    await second.start(events)
    try:
        assert [infra.key for infra in second.observe()] == [key]
        end = await until(lambda: events.end_of(key), what="giving up after the restart")
        assert end.gave_up and end.kind is Kind.IMAGE_PULL_ERROR
        # The kubelet alternates ErrImagePull (the registry's words) and ImagePullBackOff, so
        # which one the deadline meets depends on timing; either names the image.
        assert "unreachable/flow:1" in end.message, end.message
        await until(lambda: not cluster.jobs("team-c"), what="the Job deleted")
    finally:
        await second.close()
