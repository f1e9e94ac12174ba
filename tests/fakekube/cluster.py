"""``FakeCluster``: a kube-apiserver, scheduler, controllers and one kubelet in this process.

Start it with ``with FakeCluster(tmp_path) as cluster:`` and point the official ``kubernetes``
client at ``cluster.kubeconfig``. On exit it kills every pod process it started and stops and
joins every thread it started. If one of its own threads failed meanwhile (a bug in the fake,
logged when it happens), exit raises ``RuntimeError`` listing ``internal_errors``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.fakekube.api import Api
from tests.fakekube.controllers import GarbageCollector, JobController
from tests.fakekube.events import EventRecorder
from tests.fakekube.faults import Faults
from tests.fakekube.kubelet import Kubelet
from tests.fakekube.loops import Loop
from tests.fakekube.resources import BY_PLURAL, EVENTS, JOBS, PODS, SECRETS, Resource
from tests.fakekube.scheduler import NODE_NAME, Scheduler
from tests.fakekube.server import HttpServer
from tests.fakekube.store import Store

Obj = dict[str, Any]
DEFAULT_FAILING_IMAGES = r"(^|/)bad[-/]|:missing$"


class FakeCluster:
    """A one-node Kubernetes cluster good enough for the official Python client.

    ``failing_images`` is a regular expression: images it matches cannot be pulled.
    ``cpu``/``memory`` are the node's allocatable capacity, as Kubernetes quantities.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        failing_images: str = DEFAULT_FAILING_IMAGES,
        cpu: str = "4",
        memory: str = "8Gi",
    ) -> None:
        self.workdir = Path(workdir)
        self.internal_errors: list[str] = []
        self._store = Store()
        self.faults = Faults(self._store)
        self._token = secrets.token_hex(16)
        self._kubelet = Kubelet(
            self._store,
            EventRecorder(self._store, "kubelet", NODE_NAME),
            self.workdir,
            failing_images,
        )
        self._scheduler = Scheduler(
            self._store, EventRecorder(self._store, "default-scheduler"), cpu, memory
        )
        self._loops: list[Loop] = []
        self._server: HttpServer | None = None
        self.url = ""  # known once entered: the server listens on a free port
        self.kubeconfig = self.workdir / "kubeconfig"

    def __enter__(self) -> FakeCluster:
        report = self.internal_errors.append
        api = Api(self._store, self._kubelet, self.faults)
        self._server = HttpServer(api, self.faults, self._token, report)
        self.url = f"http://127.0.0.1:{self._server.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump(self._kubeconfig()))
        jobs = JobController(self._store, EventRecorder(self._store, "job-controller"))
        self._loops = [
            Loop("fakekube-scheduler", self._store, self._scheduler.sync, report),
            Loop("fakekube-job-controller", self._store, jobs.sync, report),
            Loop(
                "fakekube-garbage-collector",
                self._store,
                GarbageCollector(self._store).sync,
                report,
            ),
            Loop("fakekube-kubelet", self._store, self._kubelet.sync, report),
        ]
        self._server.start()
        for loop in self._loops:
            loop.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for loop in self._loops:
            loop.stop()
        self._store.close()
        for loop in self._loops:
            loop.join()
        self._kubelet.stop()
        if self._server is not None:
            self._server.stop()
        if self.internal_errors and exc is None:
            raise RuntimeError(
                "the fake cluster hit internal errors:\n" + "\n".join(self.internal_errors)
            )

    def jobs(self, namespace: str = "default") -> list[Obj]:
        """Current Jobs in ``namespace``, as the API serves them."""
        return self._list(JOBS, namespace)

    def pods(self, namespace: str = "default") -> list[Obj]:
        """Current Pods in ``namespace``, as the API serves them."""
        return self._list(PODS, namespace)

    def secrets(self, namespace: str = "default") -> list[Obj]:
        """Current Secrets in ``namespace``, as the API serves them."""
        return self._list(SECRETS, namespace)

    def events(self, namespace: str = "default") -> list[Obj]:
        """Events recorded in ``namespace`` (by the controllers and the kubelet)."""
        return self._list(EVENTS, namespace)

    def create_count(self, resource: str) -> int:
        """How many creates of ``resource`` ("jobs", "pods", "secrets"...) ever succeeded."""
        if resource not in BY_PLURAL:
            raise ValueError(f"unknown resource {resource!r}; known: {sorted(BY_PLURAL)}")
        return self._store.creates(resource)

    def delete_job(
        self, name: str, namespace: str = "default", *, propagation: str | None = "Background"
    ) -> None:
        """Someone else deletes the Job, by default with Background propagation (its pods go
        too). ``"Orphan"``, or None (batch/v1's default, as a plain API DELETE without a policy
        gets it), leaves its pods running without an owner."""
        self._store.delete(JOBS, namespace, name, propagation=propagation)

    def evict_pod(self, name: str, namespace: str = "default") -> None:
        """Node-pressure eviction: the process is killed, the pod Failed with reason Evicted."""
        self._kubelet.evict(namespace, name)

    def open_watches(self) -> int:
        """How many watch requests are streaming right now (to wait for one before a fault)."""
        with self._store.lock:
            return self._store.watchers

    def pod_pids(self) -> list[int]:
        """Process ids of every pod process this cluster started (running or not)."""
        return self._kubelet.pids()

    def _list(self, resource: Resource, namespace: str) -> list[Obj]:
        items, _ = self._store.list(resource, namespace)
        return items

    def _kubeconfig(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fakekube", "cluster": {"server": self.url}}],
            "users": [{"name": "fakekube", "user": {"token": self._token}}],
            "contexts": [
                {
                    "name": "fakekube",
                    "context": {"cluster": "fakekube", "user": "fakekube", "namespace": "default"},
                }
            ],
            "current-context": "fakekube",
        }
