"""An in-memory :class:`~agent.kubernetes.client.KubeClient` for unit tests.

It keeps objects with resource versions and a history of changes that watches replay, so the
list-then-watch protocol works as against a real API server. There are no controllers: a test
plays the Job controller and the kubelet itself (:meth:`FakeKube.put_pod`,
:meth:`FakeKube.set_job_conditions`). Faults: :meth:`compact` (watches from older versions get
410), :meth:`drop_watches` (open streams end abruptly), :attr:`failures` (the next calls of an
operation raise the given errors).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import defaultdict
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.errors import KubernetesError
from agent.kubernetes.client import KubeClient, ObjectList, Resource, WatchEvent

Object = dict[str, Any]
Key = tuple[Resource, str, str]


@dataclass(frozen=True)
class _Change:
    version: int
    resource: Resource
    namespace: str
    type: str
    object: Object


class FakeKube(KubeClient):
    """Objects, versions and watches in memory."""

    def __init__(self) -> None:
        self.objects: dict[Key, Object] = {}
        self.history: list[_Change] = []
        self.version = 0
        self.compacted = 0
        self.calls: list[str] = []
        self.creates: defaultdict[Resource, int] = defaultdict(int)
        # Operation name ("create", "list", "watch", ...) -> errors its next calls raise.
        self.failures: defaultdict[str, list[KubernetesError]] = defaultdict(list)
        self.logs: dict[tuple[str, str], str] = {}
        self.open_watches = 0
        self.closed = False
        self._uids = itertools.count(1)
        self._changed = asyncio.Event()
        self._drops = 0

    # KubeClient -------------------------------------------------------------------------

    async def create(self, resource: Resource, namespace: str, body: Object) -> Object:
        self._call("create", resource, namespace)
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        key = (resource, namespace, metadata["name"])
        if key in self.objects:
            raise KubernetesError(409, "AlreadyExists", f'{resource.value} "{key[2]}" exists')
        metadata.update(
            namespace=namespace,
            uid=f"uid-{next(self._uids)}",
            creationTimestamp=metadata.get("creationTimestamp") or _now(),
        )
        self.creates[resource] += 1
        return self._store(key, "ADDED", obj)

    async def read(self, resource: Resource, namespace: str, name: str) -> Object | None:
        self._call("read", resource, namespace)
        obj = self.objects.get((resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def patch(self, resource: Resource, namespace: str, name: str, patch: Object) -> Object:
        self._call("patch", resource, namespace)
        key = (resource, namespace, name)
        if key not in self.objects:
            raise KubernetesError(404, "NotFound", f'{resource.value} "{name}" not found')
        obj = copy.deepcopy(self.objects[key])
        _merge(obj, patch)
        return self._store(key, "MODIFIED", obj)

    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        self._call("delete", resource, namespace)
        return self.remove(resource, namespace, name)

    async def list(self, resource: Resource, namespace: str, selector: str) -> ObjectList:
        self._call("list", resource, namespace)
        items = [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in self.objects.items()
            if kind is resource and ns == namespace and _matches(obj, selector)
        ]
        return ObjectList(items, str(self.version))

    async def list_all_namespaces(self, resource: Resource, selector: str) -> ObjectList:
        self._call("list", resource, "*")
        items = [
            copy.deepcopy(obj)
            for (kind, _, _), obj in self.objects.items()
            if kind is resource and _matches(obj, selector)
        ]
        return ObjectList(items, str(self.version))

    async def watch(
        self,
        resource: Resource,
        namespace: str,
        selector: str,
        resource_version: str,
        timeout_seconds: float,
    ) -> AsyncGenerator[WatchEvent, None]:
        self._call("watch", resource, namespace)
        since = int(resource_version or 0)
        if since < self.compacted:
            raise KubernetesError(410, "Expired", "too old resource version")
        drops = self._drops
        self.open_watches += 1
        try:
            while True:
                for change in [c for c in self.history if c.version > since]:
                    if self._drops != drops:
                        break
                    since = change.version
                    if (
                        change.resource is resource
                        and change.namespace == namespace
                        and _matches(change.object, selector)
                    ):
                        yield WatchEvent(change.type, copy.deepcopy(change.object))
                if self._drops != drops:
                    # Cut at once: what happened after the drop is not delivered.
                    raise KubernetesError(0, "WatchBroken", "connection reset")
                self._changed.clear()
                await self._changed.wait()
        finally:
            self.open_watches -= 1

    async def log_tail(self, namespace: str, pod: str, container: str | None, lines: int) -> str:
        self._call("log", Resource.PODS, namespace)
        text = self.logs.get((namespace, pod))
        if text is None:
            raise KubernetesError(400, "BadRequest", f'container "{container}" is waiting')
        return "\n".join(text.splitlines()[-lines:])

    async def close(self) -> None:
        self.closed = True

    # What a test does ---------------------------------------------------------------------

    def get(self, resource: Resource, name: str, namespace: str = "default") -> Object | None:
        return self.objects.get((resource, namespace, name))

    def names(self, resource: Resource, namespace: str = "default") -> list[str]:
        return sorted(n for (kind, ns, n) in self.objects if kind is resource and ns == namespace)

    def remove(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete an object; deleting a Job deletes its pods and owned Secrets too."""
        obj = self.objects.pop((resource, namespace, name), None)
        if obj is None:
            return False
        self._record(resource, namespace, "DELETED", obj)
        if resource is Resource.JOBS:
            uid = obj["metadata"]["uid"]
            for kind, ns, other in list(self.objects):
                dependent = self.objects[(kind, ns, other)]
                owners = dependent["metadata"].get("ownerReferences") or []
                if ns == namespace and any(o.get("uid") == uid for o in owners):
                    self.remove(kind, ns, other)
        return True

    def put_pod(
        self,
        job: str,
        status: Object,
        *,
        name: str | None = None,
        namespace: str = "default",
        created: str | None = None,
    ) -> Object:
        """Create or replace the pod ``name`` (default ``<job>-pod``) of a Job with a status."""
        owner = self.objects[(Resource.JOBS, namespace, job)]
        name = name or f"{job}-pod"
        labels = dict(owner["spec"]["template"]["metadata"]["labels"])
        labels["batch.kubernetes.io/job-name"] = job
        key = (Resource.PODS, namespace, name)
        existing = self.objects.get(key)
        pod = (
            copy.deepcopy(existing)
            if existing
            else {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": f"uid-{next(self._uids)}",
                    "creationTimestamp": created or _now(),
                    "labels": labels,
                    "ownerReferences": [
                        {
                            "kind": "Job",
                            "name": job,
                            "uid": owner["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": copy.deepcopy(owner["spec"]["template"]["spec"]),
            }
        )
        pod["status"] = copy.deepcopy(status)
        return self._store(key, "MODIFIED" if existing else "ADDED", pod)

    def set_job_conditions(self, job: str, *conditions: Object, namespace: str = "default") -> None:
        key = (Resource.JOBS, namespace, job)
        obj = copy.deepcopy(self.objects[key])
        obj.setdefault("status", {})["conditions"] = [
            {"status": "True", **condition} for condition in conditions
        ]
        self._store(key, "MODIFIED", obj)

    def compact(self) -> None:
        """Every version before the current one becomes too old to watch from."""
        self.compacted = self.version

    def drop_watches(self) -> None:
        """Every open watch ends with a connection error."""
        self._drops += 1
        self._changed.set()

    # Internals ----------------------------------------------------------------------------

    def _call(self, operation: str, resource: Resource, namespace: str) -> None:
        self.calls.append(f"{operation} {resource.value} {namespace}")
        pending = self.failures[operation]
        if pending:
            raise pending.pop(0)

    def _store(self, key: Key, kind: str, obj: Object) -> Object:
        self.objects[key] = obj
        self._record(key[0], key[1], kind, obj)
        return copy.deepcopy(obj)

    def _record(self, resource: Resource, namespace: str, kind: str, obj: Object) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.history.append(_Change(self.version, resource, namespace, kind, copy.deepcopy(obj)))
        self._changed.set()


def _matches(obj: Object, selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _merge(target: Object, patch: Object) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
