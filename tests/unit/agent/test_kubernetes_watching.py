"""List-then-watch against the in-memory API: resume, re-list on 410, reconcile, back off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.errors import KubernetesError
from agent.kubernetes.client import Resource
from agent.kubernetes.watching import ObjectWatch
from agent.settings import BackoffSettings, KubernetesSettings
from agent.tasks import TaskSet
from tests.unit.agent.conftest import Eventually
from tests.unit.agent.fake_kube import FakeKube

SETTINGS = KubernetesSettings(watch_backoff=BackoffSettings(base=0.01, cap=0.05))
SELECTOR = "flowyard.io/pool=p"


def job(name: str, pool: str = "p") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"flowyard.io/pool": pool}}, "spec": {}}


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []
        self.relists: list[float] = []

    def on_change(self, watch: ObjectWatch, kind: str, obj: dict[str, Any]) -> None:
        self.changes.append((kind, obj["metadata"]["name"]))

    def on_relist(self, watch: ObjectWatch, started: float) -> None:
        self.relists.append(started)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def watch(kube: FakeKube, recorder: Recorder) -> AsyncIterator[ObjectWatch]:
    watch = ObjectWatch(
        kube, Resource.JOBS, "default", SELECTOR, SETTINGS, recorder.on_change, recorder.on_relist
    )
    tasks = TaskSet("test")
    tasks.spawn("watch", watch.run())
    yield watch
    await tasks.stop(grace=0)


async def test_lists_then_follows_changes(
    kube: FakeKube, recorder: Recorder, eventually: Eventually
) -> None:
    await kube.create(Resource.JOBS, "default", job("a"))
    await kube.create(Resource.JOBS, "default", job("other", pool="q"))
    watch = ObjectWatch(
        kube, Resource.JOBS, "default", SELECTOR, SETTINGS, recorder.on_change, recorder.on_relist
    )
    tasks = TaskSet("test")
    tasks.spawn("watch", watch.run())
    try:
        await watch.wait_synced()
        assert set(watch.objects) == {"a"}  # label-selected: the other pool's Job is not here
        assert recorder.changes == [("MODIFIED", "a")]
        await kube.create(Resource.JOBS, "default", job("b"))
        await kube.patch(Resource.JOBS, "default", "a", {"status": {"active": 1}})
        kube.remove(Resource.JOBS, "default", "b")
        await eventually(lambda: len(recorder.changes) == 4, message="three changes")
        assert recorder.changes[1:] == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        assert watch.objects["a"]["status"] == {"active": 1}
        assert kube.calls.count("list jobs default") == 1
    finally:
        await tasks.stop(grace=0)


async def test_a_dropped_stream_resumes_from_the_last_version_without_listing(
    kube: FakeKube, watch: ObjectWatch, recorder: Recorder, eventually: Eventually
) -> None:
    await watch.wait_synced()
    await eventually(lambda: kube.open_watches == 1, message="the watch")
    await kube.create(Resource.JOBS, "default", job("a"))
    await eventually(lambda: ("ADDED", "a") in recorder.changes, message="a")
    kube.drop_watches()
    await kube.create(Resource.JOBS, "default", job("b"))
    await eventually(lambda: ("ADDED", "b") in recorder.changes, message="b after the drop")
    assert kube.calls.count("list jobs default") == 1
    assert recorder.changes.count(("ADDED", "a")) == 1  # nothing replayed twice


async def test_410_relists_and_reports_what_vanished_meanwhile(
    kube: FakeKube, watch: ObjectWatch, recorder: Recorder, eventually: Eventually
) -> None:
    await kube.create(Resource.JOBS, "default", job("a"))
    await kube.create(Resource.JOBS, "default", job("b"))
    await eventually(lambda: set(watch.objects) == {"a", "b"}, message="both Jobs")
    # The watch goes down; meanwhile "a" is deleted and history is compacted away.
    kube.failures["watch"].append(KubernetesError(0, "ConnectionError", "refused"))
    kube.drop_watches()
    kube.remove(Resource.JOBS, "default", "a")
    kube.compact()
    await eventually(lambda: len(recorder.relists) == 2, message="a second list")
    assert ("DELETED", "a") in recorder.changes
    assert set(watch.objects) == {"b"}
    assert watch.last_error is None


async def test_failing_requests_are_retried_with_backoff(
    kube: FakeKube, recorder: Recorder, eventually: Eventually
) -> None:
    kube.failures["list"].extend([KubernetesError(503, "ServiceUnavailable")] * 3)
    watch = ObjectWatch(kube, Resource.JOBS, "default", SELECTOR, SETTINGS, recorder.on_change)
    tasks = TaskSet("test")
    tasks.spawn("watch", watch.run())
    try:
        await watch.wait_synced()
        assert kube.calls.count("list jobs default") == 4
    finally:
        await tasks.stop(grace=0)


async def test_wait_synced_raises_a_permission_error(kube: FakeKube, recorder: Recorder) -> None:
    kube.failures["list"].extend([KubernetesError(403, "Forbidden", "jobs is forbidden")] * 100)
    watch = ObjectWatch(kube, Resource.JOBS, "default", SELECTOR, SETTINGS, recorder.on_change)
    tasks = TaskSet("test")
    tasks.spawn("watch", watch.run())
    try:
        with pytest.raises(KubernetesError, match="Forbidden"):
            await watch.wait_synced()
    finally:
        await tasks.stop(grace=0)
