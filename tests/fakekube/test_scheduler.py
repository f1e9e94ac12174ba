"""The fake scheduler against pods that change under it."""

from __future__ import annotations

from typing import Any

from tests.fakekube.events import EventRecorder
from tests.fakekube.resources import PODS
from tests.fakekube.scheduler import NODE_NAME, Scheduler
from tests.fakekube.store import Store


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "python:3.11-slim"}]},
    }


class DeletedAfterListing(Store):
    """A store whose first pod is deleted right after each list of pods (its Job removed while
    the scheduler looked at it)."""

    def list(self, resource: Any, namespace: Any, selector: Any = None) -> Any:
        listed = super().list(resource, namespace, selector)
        if resource is PODS and listed[0]:
            first = listed[0][0]["metadata"]
            self.delete(PODS, first["namespace"], first["name"], grace=0)
        return listed


def test_a_pod_deleted_while_the_scheduler_looks_is_skipped_and_the_others_bound() -> None:
    store = DeletedAfterListing()
    store.create(PODS, "default", pod("gone"))
    store.create(PODS, "default", pod("kept"))
    Scheduler(store, EventRecorder(store, "default-scheduler"), "4", "8Gi").sync()
    pods, _ = Store.list(store, PODS, "default")
    assert [(p["metadata"]["name"], p["spec"].get("nodeName")) for p in pods] == [
        ("kept", NODE_NAME)
    ]
