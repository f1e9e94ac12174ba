"""The agent's view of its Jobs and pods: one Job watch and one pod watch per namespace.

:class:`ClusterView` starts the watches of a namespace when it is first needed (the agent's own
namespace at start, others when a template names them), keeps pods indexed by the Job they
belong to, and tells its listener about every change by Job name. Waiting for a deleted Job to
disappear is served from the same watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from agent.kubernetes.client import KubeClient, Resource
from agent.kubernetes.objects import object_name, owner_job
from agent.kubernetes.watching import DELETED, ObjectWatch
from agent.settings import KubernetesSettings
from agent.tasks import TaskSet

__all__ = ["ClusterView", "ViewListener"]

logger = logging.getLogger(__name__)

Object = dict[str, Any]


class ViewListener(Protocol):
    """What the view tells about changes; called on the event loop, never awaited."""

    def job_changed(self, namespace: str, name: str, job: Object, deleted: bool) -> None:
        """A Job was added, modified or deleted (``deleted``)."""

    def pods_changed(self, namespace: str, job: str) -> None:
        """A pod of the Job ``job`` was added, modified or deleted."""

    def jobs_relisted(self, namespace: str, started: float) -> None:
        """The Jobs of ``namespace`` were listed anew, by a request started at loop time
        ``started``: a Job known to exist before then and absent now is gone."""


class ClusterView:
    """Caches of the pool's Jobs and pods, per namespace, kept current by watches."""

    def __init__(
        self,
        client: KubeClient,
        selector: str,
        settings: KubernetesSettings,
        listener: ViewListener,
    ) -> None:
        self._client = client
        self._selector = selector
        self._settings = settings
        self._listener = listener
        self._jobs: dict[str, ObjectWatch] = {}
        self._pods: dict[str, ObjectWatch] = {}
        # Pods by (namespace, job name), then by pod name.
        self._pods_by_job: dict[tuple[str, str], dict[str, Object]] = {}
        self._gone: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks = TaskSet("kubernetes-watch")

    @property
    def namespaces(self) -> Iterable[str]:
        """The namespaces watched."""
        return tuple(self._jobs)

    def watch(self, namespace: str) -> None:
        """Start watching ``namespace`` unless it is watched already."""
        if namespace in self._jobs:
            return
        jobs = ObjectWatch(
            self._client,
            Resource.JOBS,
            namespace,
            self._selector,
            self._settings,
            self._on_change,
            self._on_relist,
        )
        pods = ObjectWatch(
            self._client, Resource.PODS, namespace, self._selector, self._settings, self._on_change
        )
        self._jobs[namespace] = jobs
        self._pods[namespace] = pods
        self._tasks.spawn(f"jobs:{namespace}", jobs.run())
        self._tasks.spawn(f"pods:{namespace}", pods.run())

    async def wait_synced(self, namespace: str) -> None:
        """Wait for the first lists of ``namespace``; raise a 401/403 as it comes."""
        await self._jobs[namespace].wait_synced()
        await self._pods[namespace].wait_synced()

    def last_error(self, namespace: str) -> Exception | None:
        """Why the latest list or watch of ``namespace`` failed, if it did."""
        return self._jobs[namespace].last_error or self._pods[namespace].last_error

    def jobs(self, namespace: str) -> list[Object]:
        """The Jobs of ``namespace`` in the cache."""
        watch = self._jobs.get(namespace)
        return list(watch.objects.values()) if watch is not None else []

    def job(self, namespace: str, name: str) -> Object | None:
        """One Job from the cache."""
        watch = self._jobs.get(namespace)
        return watch.objects.get(name) if watch is not None else None

    def pods_of(self, namespace: str, job: str) -> list[Object]:
        """The cached pods of one Job."""
        return list(self._pods_by_job.get((namespace, job), {}).values())

    def gone_event(self, namespace: str, name: str) -> asyncio.Event:
        """An event set once the Job ``name`` is seen deleted (take it before deleting)."""
        return self._gone.setdefault((namespace, name), asyncio.Event())

    async def stop(self) -> None:
        """Stop every watch."""
        await self._tasks.stop(grace=0)

    def _on_change(self, watch: ObjectWatch, kind: str, obj: Mapping[str, Any]) -> None:
        namespace, name = watch.namespace, object_name(obj)
        if watch.resource is Resource.PODS:
            job = owner_job(obj)
            if job is None:
                return
            pods = self._pods_by_job.setdefault((namespace, job), {})
            if kind == DELETED:
                pods.pop(name, None)
                if not pods:
                    del self._pods_by_job[(namespace, job)]
            else:
                pods[name] = dict(obj)
            self._listener.pods_changed(namespace, job)
            return
        if kind == DELETED:
            waiter = self._gone.pop((namespace, name), None)
            if waiter is not None:
                waiter.set()
        self._listener.job_changed(namespace, name, dict(obj), kind == DELETED)

    def _on_relist(self, watch: ObjectWatch, started: float) -> None:
        for namespace, name in list(self._gone):
            if namespace == watch.namespace and name not in watch.objects:
                self._gone.pop((namespace, name)).set()
        self._listener.jobs_relisted(watch.namespace, started)
