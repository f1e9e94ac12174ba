"""The Job controller and the garbage collector, as kube-controller-manager runs them.

Job controller, faithful: pods named ``<job>-<5 chars>`` from the template, with the template's
labels (which already carry ``controller-uid``/``job-name`` and their ``batch.kubernetes.io/``
forms) and a controller ``ownerReference`` with ``blockOwnerDeletion``; ``status.active``,
``ready``, ``terminating``, ``succeeded``, ``failed``, ``startTime``, ``completionTime``,
``uncountedTerminatedPods``; a failed (or evicted, or deleted while running) pod is replaced
with a new pod until ``failed > backoffLimit``; the final conditions are ``SuccessCriteriaMet`` +
``Complete`` (reason CompletionsReached) or ``FailureTarget`` + ``Failed`` (reason
BackoffLimitExceeded or DeadlineExceeded for ``activeDeadlineSeconds``), with the usual Events.
``spec.suspend`` deletes active pods and sets the ``Suspended`` condition; resuming resets
``startTime``. Simplified: NonIndexed completion mode only; replacements are created at once (no
exponential back-off delay); ``podFailurePolicy``, ``successPolicy`` and
``ttlSecondsAfterFinished`` are ignored; ``restartPolicy: OnFailure`` is run like Never.

Garbage collector, faithful: Background deletion of an owner deletes its dependents afterwards;
Foreground deletion deletes the dependents first and removes the owner (its
``foregroundDeletion`` finalizer) once no ``blockOwnerDeletion`` dependent is left; Orphan
deletion strips the owner from dependents' ``ownerReferences`` before the owner goes. A dependent
whose owners are all gone is deleted. Simplified: it scans the store on every tick instead of
keeping a dependency graph, and only knows owners of the kinds this fake serves.
"""

from __future__ import annotations

import collections
import contextlib
from datetime import UTC, datetime
from typing import Any

from tests.fakekube import errors
from tests.fakekube.events import EventRecorder
from tests.fakekube.resources import BY_KIND, CONFIGMAPS, JOBS, PODS, SECRETS, Resource
from tests.fakekube.store import FOREGROUND, ORPHAN, Store, timestamp

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
OWNABLE = (JOBS, PODS, SECRETS, CONFIGMAPS)  # Events are left alone, as they carry no owners


def finished(job: Obj) -> bool:
    """Whether the Job has a true Complete or Failed condition."""
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in job.get("status", {}).get("conditions", [])
    )


class JobController:
    """Runs each Job's pods to completion or to its back-off limit."""

    def __init__(self, store: Store, recorder: EventRecorder) -> None:
        self._store = store
        self._recorder = recorder
        # Pods already counted as succeeded/failed, per job uid: the real controller keeps
        # this in status.uncountedTerminatedPods plus a pod finalizer; memory is enough here.
        self._counted: dict[str, dict[str, str]] = collections.defaultdict(dict)
        self._seen_active: dict[str, set[str]] = collections.defaultdict(set)

    def sync(self) -> None:
        """Reconcile every Job with its pods."""
        jobs, _ = self._store.list(JOBS, None)
        pods, _ = self._store.list(PODS, None)
        owned: dict[str, list[Obj]] = collections.defaultdict(list)
        for pod in pods:
            for ref in pod["metadata"].get("ownerReferences", []):
                if ref.get("controller") and ref.get("kind") == "Job":
                    owned[ref["uid"]].append(pod)
        for job in jobs:
            self._sync_job(job, owned[job["metadata"]["uid"]])
        live = {job["metadata"]["uid"] for job in jobs}
        for uid in set(self._counted) - live:
            del self._counted[uid]
        for uid in set(self._seen_active) - live:
            del self._seen_active[uid]

    def _sync_job(self, job: Obj, pods: list[Obj]) -> None:
        uid = job["metadata"]["uid"]
        counted, seen = self._counted[uid], self._seen_active[uid]
        present = {pod["metadata"]["uid"] for pod in pods}
        for gone in seen - present - set(counted):
            counted[gone] = "Failed"
        active = []
        for pod in pods:
            pod_uid, phase = pod["metadata"]["uid"], pod["status"].get("phase")
            if pod_uid in counted:
                continue
            if phase in TERMINAL:
                counted[pod_uid] = phase
            elif pod["metadata"].get("deletionTimestamp"):
                counted[pod_uid] = "Failed"
            else:
                active.append(pod)
        seen.clear()
        seen.update(pod["metadata"]["uid"] for pod in active)
        if finished(job):
            self._delete_pods(job, active)
            return
        spec = job["spec"]
        succeeded = sum(1 for phase in counted.values() if phase == "Succeeded")
        failed = len(counted) - succeeded
        conditions: list[Obj] = []
        if succeeded >= spec.get("completions", 1):
            conditions = _conditions(
                "SuccessCriteriaMet",
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            self._recorder.normal(job, "Completed", "Job completed")
        elif failed > spec.get("backoffLimit", 6):
            conditions = _conditions(
                "FailureTarget",
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
            self._recorder.warning(job, "BackoffLimitExceeded", conditions[0]["message"])
        elif self._past_deadline(job):
            conditions = _conditions(
                "FailureTarget",
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
            self._recorder.warning(job, "DeadlineExceeded", conditions[0]["message"])
        suspended = bool(spec.get("suspend"))
        if conditions or suspended:
            self._delete_pods(job, active)
            active = []
        elif not job["metadata"].get("deletionTimestamp"):
            wanted = min(spec.get("parallelism", 1), spec.get("completions", 1) - succeeded)
            for _ in range(wanted - len(active)):
                active.append(self._create_pod(job))
            seen.update(pod["metadata"]["uid"] for pod in active)
        terminating = sum(
            1
            for pod in pods
            if pod["metadata"].get("deletionTimestamp")
            and pod["status"].get("phase") not in TERMINAL
        )
        self._write_status(job, active, terminating, succeeded, failed, conditions, suspended)

    @staticmethod
    def _past_deadline(job: Obj) -> bool:
        deadline, started = job["spec"].get("activeDeadlineSeconds"), job["status"].get("startTime")
        if deadline is None or not started:
            return False
        start = datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return (datetime.now(UTC) - start).total_seconds() >= float(deadline)

    def _create_pod(self, job: Obj) -> Obj:
        meta, template = job["metadata"], job["spec"]["template"]
        template_meta = template.get("metadata") or {}
        pod = {
            "metadata": {
                "generateName": f"{meta['name']}-",
                "labels": dict(template_meta.get("labels") or {}),
                "annotations": dict(template_meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec", {}),
        }
        created = self._store.create(PODS, meta["namespace"], pod)
        self._recorder.normal(
            job, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}"
        )
        return created

    def _delete_pods(self, job: Obj, pods: list[Obj]) -> None:
        for pod in pods:
            meta = pod["metadata"]
            try:
                self._store.delete(PODS, meta["namespace"], meta["name"], uid=meta["uid"])
            except errors.ApiError:
                continue
            self._recorder.normal(job, "SuccessfulDelete", f"Deleted pod: {meta['name']}")

    def _write_status(
        self,
        job: Obj,
        active: list[Obj],
        terminating: int,
        succeeded: int,
        failed: int,
        conditions: list[Obj],
        suspended: bool,
    ) -> None:
        ready = sum(
            1
            for pod in active
            for c in pod.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        )

        def write(current: Obj) -> None:
            status = current.setdefault("status", {})
            for field, value in (
                ("active", len(active)),
                ("succeeded", succeeded),
                ("failed", failed),
            ):
                if value:
                    status[field] = value
                else:
                    status.pop(field, None)
            status["ready"] = ready
            status["terminating"] = terminating
            status["uncountedTerminatedPods"] = {}
            _suspension(status, suspended)
            if not suspended:
                status.setdefault("startTime", timestamp())
            if conditions:
                status["conditions"] = [*status.get("conditions", []), *conditions]
                if conditions[-1]["type"] == "Complete":
                    status["completionTime"] = timestamp()

        meta = job["metadata"]
        # A job deleted meanwhile is simply gone; the next sync no longer sees it.
        with contextlib.suppress(errors.ApiError):
            self._store.update(JOBS, meta["namespace"], meta["name"], write, subresource="status")


def _suspension(status: Obj, suspended: bool) -> None:
    """Keep the Suspended condition in step with ``spec.suspend``, as the real controller does."""
    existing = next((c for c in status.get("conditions", []) if c["type"] == "Suspended"), None)
    if existing is None and not suspended:
        return
    wanted = (
        ("True", "JobSuspended", "Job suspended")
        if suspended
        else ("False", "JobResumed", "Job resumed")
    )
    if existing is not None and existing["status"] == wanted[0]:
        return
    now = timestamp()
    condition = {
        "type": "Suspended",
        "status": wanted[0],
        "reason": wanted[1],
        "message": wanted[2],
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }
    others = [c for c in status.get("conditions", []) if c["type"] != "Suspended"]
    status["conditions"] = [*others, condition]
    if not suspended:
        status.pop("startTime", None)


def _conditions(target: str, final: str, reason: str, message: str) -> list[Obj]:
    now = timestamp()
    return [
        {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": now,
            "lastTransitionTime": now,
        }
        for kind in (target, final)
    ]


class GarbageCollector:
    """Deletes dependents of deleted owners and finishes Foreground/Orphan deletions."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def sync(self) -> None:
        """Act on every deleting owner and every dependent whose owners are gone."""
        objects = [
            (resource, obj) for resource in OWNABLE for obj in self._store.list(resource, None)[0]
        ]
        uids = {obj["metadata"]["uid"] for _, obj in objects}
        dependents: dict[str, list[tuple[Resource, Obj]]] = collections.defaultdict(list)
        for resource, obj in objects:
            for ref in obj["metadata"].get("ownerReferences", []):
                dependents[ref["uid"]].append((resource, obj))
        for resource, obj in objects:
            meta = obj["metadata"]
            finalizers = meta.get("finalizers") or []
            if meta.get("deletionTimestamp") and FOREGROUND in finalizers:
                self._foreground(resource, obj, dependents[meta["uid"]])
            elif meta.get("deletionTimestamp") and ORPHAN in finalizers:
                self._orphan(resource, obj, dependents[meta["uid"]])
            elif self._dangling(obj, uids):
                self._delete(resource, obj)

    def _foreground(
        self, resource: Resource, owner: Obj, dependents: list[tuple[Resource, Obj]]
    ) -> None:
        blocking = False
        for dep_resource, dependent in dependents:
            if not dependent["metadata"].get("deletionTimestamp"):
                self._delete(dep_resource, dependent)
            refs = dependent["metadata"].get("ownerReferences", [])
            owner_uid = owner["metadata"]["uid"]
            blocking |= any(r["uid"] == owner_uid and r.get("blockOwnerDeletion") for r in refs)
        if not blocking:
            self._drop_finalizer(resource, owner, FOREGROUND)

    def _orphan(
        self, resource: Resource, owner: Obj, dependents: list[tuple[Resource, Obj]]
    ) -> None:
        owner_uid = owner["metadata"]["uid"]

        def strip(dependent: Obj) -> None:
            refs = [
                r for r in dependent["metadata"].get("ownerReferences", []) if r["uid"] != owner_uid
            ]
            if refs:
                dependent["metadata"]["ownerReferences"] = refs
            else:
                dependent["metadata"].pop("ownerReferences", None)

        for dep_resource, dependent in dependents:
            meta = dependent["metadata"]
            try:
                self._store.update(dep_resource, meta["namespace"], meta["name"], strip)
            except errors.ApiError:
                continue
        self._drop_finalizer(resource, owner, ORPHAN)

    @staticmethod
    def _dangling(obj: Obj, uids: set[str]) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs or obj["metadata"].get("deletionTimestamp"):
            return False
        known = [r for r in refs if (r.get("apiVersion"), r.get("kind")) in BY_KIND]
        return len(known) == len(refs) and all(r["uid"] not in uids for r in refs)

    def _delete(self, resource: Resource, obj: Obj) -> None:
        meta = obj["metadata"]
        with contextlib.suppress(errors.ApiError):
            self._store.delete(
                resource, meta["namespace"], meta["name"], uid=meta["uid"], propagation="Background"
            )

    def _drop_finalizer(self, resource: Resource, obj: Obj, finalizer: str) -> None:
        def drop(current: Obj) -> None:
            kept = [f for f in current["metadata"].get("finalizers", []) if f != finalizer]
            if kept:
                current["metadata"]["finalizers"] = kept
            else:
                current["metadata"].pop("finalizers", None)

        meta = obj["metadata"]
        with contextlib.suppress(errors.ApiError):
            self._store.update(resource, meta["namespace"], meta["name"], drop)
