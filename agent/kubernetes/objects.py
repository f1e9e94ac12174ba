"""Reading the agent's own Jobs and pods: which attempt an object belongs to, and its deadline.

Pure functions on API dicts. A Job is the agent's when its labels name a run and an attempt and
its name is the one :func:`~agent.kubernetes.naming.job_name` derives from them; a pod belongs
to the Job its ``job-name`` label (set by Kubernetes) or its controller reference names.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.kubernetes.naming import ATTEMPT_LABEL, RUN_ID_LABEL, job_name
from agent.models import RunKey

__all__ = [
    "POD_START_TIMEOUT_ANNOTATION",
    "annotated_timeout",
    "deleting",
    "key_of_job_name",
    "object_name",
    "orphaned",
    "owner_job",
    "owner_uid",
    "run_key",
    "start_deadline",
    "tracking_uid",
    "uid",
]

Object = Mapping[str, Any]

POD_START_TIMEOUT_ANNOTATION = "flowyard.io/pod-start-timeout-seconds"
"""Set on every Job the agent creates, so that an agent adopting it keeps its deadline."""

_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# Set by Kubernetes on a Job's pods; they survive the Job when it is deleted without cascade.
_CONTROLLER_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")


def object_name(obj: Object) -> str:
    """``metadata.name``."""
    return str((obj.get("metadata") or {}).get("name") or "")


def uid(obj: Object) -> str | None:
    """``metadata.uid``."""
    value = (obj.get("metadata") or {}).get("uid")
    return str(value) if value else None


def deleting(obj: Object) -> bool:
    """Whether the object is on its way out (``deletionTimestamp`` set)."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def run_key(job: Object) -> RunKey | None:
    """The attempt a Job of ours belongs to, from its labels (None for anything else)."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    run_id, attempt = labels.get(RUN_ID_LABEL), labels.get(ATTEMPT_LABEL)
    if run_id is None or attempt is None:
        return None
    try:
        key = RunKey(str(run_id), int(attempt))
        expected = job_name(key.run_id, key.attempt)
    except (TypeError, ValueError):
        return None
    return key if object_name(job) == expected else None


def key_of_job_name(name: str) -> RunKey | None:
    """The attempt a Job name stands for: ``flowyard-<run id>-<attempt>``."""
    prefix, _, rest = name.partition("-")
    run_id, _, attempt = rest.rpartition("-")
    if prefix != "flowyard" or not run_id or not attempt.isdigit():
        return None
    return RunKey(run_id, int(attempt))


def owner_job(pod: Object) -> str | None:
    """The name of the Job a pod belongs to."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    for label in _JOB_NAME_LABELS:
        if labels.get(label):
            return str(labels[label])
    for owner in metadata.get("ownerReferences") or ():
        if owner.get("kind") == "Job" and owner.get("name"):
            return str(owner["name"])
    return None


def owner_uid(pod: Object) -> str | None:
    """The uid of the Job controlling a pod."""
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if owner.get("kind") == "Job" and owner.get("controller"):
            return str(owner.get("uid") or "") or None
    return None


def tracking_uid(pod: Object) -> str | None:
    """The uid of the Job that created a pod, from its labels (kept after an orphaning delete,
    which strips the owner reference)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for label in _CONTROLLER_UID_LABELS:
        if labels.get(label):
            return str(labels[label])
    return None


def orphaned(pod: Object) -> bool:
    """Whether a pod outlived its Job: created by a Job (its labels say so) but owned by none.

    The Job controller gives every pod it creates a controller reference; only a Job deleted
    without cascade takes it away, leaving the pod running.
    """
    metadata = pod.get("metadata") or {}
    owned = any(o.get("kind") == "Job" for o in metadata.get("ownerReferences") or ())
    return not owned and tracking_uid(pod) is not None and not deleting(pod)


def annotated_timeout(job: Object) -> float | None:
    """The pod-start timeout the agent wrote on the Job, if any."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    try:
        seconds = float(annotations.get(POD_START_TIMEOUT_ANNOTATION, ""))
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def start_deadline(job: Object, default_timeout: float) -> datetime:
    """When an existing Job's pod must have started: its creation plus its timeout."""
    timeout = annotated_timeout(job) or default_timeout
    created = (job.get("metadata") or {}).get("creationTimestamp")
    try:
        since = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        since = datetime.now(UTC)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return since + timedelta(seconds=timeout)
