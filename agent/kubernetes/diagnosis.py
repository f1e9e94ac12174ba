"""What a Job and its pods say about a run attempt: pure functions from API dicts to verdicts.

A pod is diagnosed by the first of these that applies (the most specific cause wins):

==============================================  ===============================
pod ``status.reason`` Evicted                   EVICTED
a container terminated with reason OOMKilled     OOM_KILLED (exit code)
waiting: ErrImagePull, ImagePullBackOff,         IMAGE_PULL_ERROR
InvalidImageName, ErrImageNeverPull
waiting: CrashLoopBackOff                        CRASH_LOOP (last exit code)
waiting: CreateContainerConfigError,             PENDING with that reason
CreateContainerError
condition PodScheduled False, Unschedulable      UNSCHEDULABLE (scheduler's message)
phase Failed                                     FAILED (exit code)
phase Succeeded                                  SUCCEEDED
phase Pending                                    PENDING
==============================================  ===============================

A running pod has nothing to report (None). The attempt itself ends with the Job: condition
``Complete`` is SUCCEEDED; ``Failed`` (or ``FailureTarget``) is FAILED with the failed pod's
exit code, or that pod's own verdict when it was OOMKilled or evicted; a Job with no
retries left (``backoffLimit: 0``) ends as soon as its pod failed, without waiting for the
Job controller. A Job deleted before it finished is DELETED.

Image pull errors are of two sorts (:func:`pull_error_is_final`). Most can heal while the pod
waits: a registry that is slow, down or rate-limiting, credentials that get fixed. Two cannot:
an image name Kubernetes cannot parse (``InvalidImageName``), and an image, tag or repository
the registry says does not exist (``ErrImagePull`` whose message says ``not found``,
``manifest unknown``, ``name unknown`` or ``repository does not exist``, as containerd, CRI-O
and Docker word it) — unless the same message also shows a cause that can heal (a timeout, a
401, a 429...), which wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.models import ENDING_KINDS, InfraEventKind

__all__ = [
    "Diagnosis",
    "diagnose_pod",
    "job_deleted",
    "job_finished",
    "job_outcome",
    "latest_pod",
    "pod_started",
    "pull_error_is_final",
]

Object = Mapping[str, Any]

IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})

# What registries and runtimes say when an image, tag or repository does not exist, e.g.
#   containerd: `failed to resolve reference "docker.io/library/nginx:nope": ...: not found`
#   Docker Hub via containerd: `pull access denied, repository does not exist or may require
#     authorization: server message: insufficient_scope: authorization failed`
#   dockerd: `manifest for nginx:nope not found: manifest unknown: manifest unknown`
#   registry v2: `name unknown: repository name not known to registry`
_MISSING_IMAGE = re.compile(
    r"not found|manifest unknown|name unknown|repository does not exist", re.IGNORECASE
)
# Causes a later pull may not meet: network trouble, an overloaded or rate-limiting registry,
# credentials refused (a Secret can be fixed while the pod waits).
_MAY_HEAL = re.compile(
    r"time(d)? ?out|deadline exceeded|\b(401|403|408|429|5\d\d)\b|too ?many ?requests"
    r"|unauthori[sz]ed|forbidden|connection (refused|reset)|no such host|i/o|eof\b"
    r"|x509|tls|temporar|unavailable|try again",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Diagnosis:
    """A verdict about an attempt's infrastructure, before it becomes an event."""

    kind: InfraEventKind
    reason: str
    message: str = ""
    exit_code: int | None = None

    @property
    def ends(self) -> bool:
        """Whether this verdict means the infrastructure no longer runs the engine."""
        return self.kind in ENDING_KINDS


def pod_started(pod: Object) -> bool:
    """Whether a container of the pod ever ran: running or terminated, now or before."""
    for status in _container_statuses(pod):
        state = status.get("state") or {}
        last = status.get("lastState") or {}
        # Presence is what counts: a state's details may be empty.
        if "running" in state or "terminated" in state or "terminated" in last:
            return True
    return False


def diagnose_pod(pod: Object) -> Diagnosis | None:
    """What the pod's status says, or None while it simply runs."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if status.get("reason") == "Evicted":
        return Diagnosis(InfraEventKind.EVICTED, "Evicted", str(status.get("message") or ""))
    statuses = list(_container_statuses(pod))
    for container in statuses:
        terminated = _terminated(container)
        if terminated is not None and terminated.get("reason") == "OOMKilled":
            return Diagnosis(
                InfraEventKind.OOM_KILLED,
                "OOMKilled",
                f"container {container.get('name', '?')!s} was killed for exceeding its "
                "memory limit",
                _int(terminated.get("exitCode")),
            )
    for container in statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        message = str(waiting.get("message") or "")
        if reason in IMAGE_PULL_REASONS:
            image = str(container.get("image") or "")
            if image and image not in message:
                message = f'image "{image}": {message}' if message else f'image "{image}"'
            return Diagnosis(InfraEventKind.IMAGE_PULL_ERROR, reason, message)
        if reason == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            return Diagnosis(InfraEventKind.CRASH_LOOP, reason, message, _int(last.get("exitCode")))
        if reason in CONFIG_REASONS:
            return Diagnosis(InfraEventKind.PENDING, reason, message)
    scheduled = _condition(status.get("conditions"), "PodScheduled")
    if (
        scheduled is not None
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == "Unschedulable"
    ):
        return Diagnosis(
            InfraEventKind.UNSCHEDULABLE, "Unschedulable", str(scheduled.get("message") or "")
        )
    if phase == "Failed":
        terminated = _failed_container(statuses)
        reason = str(
            (terminated or {}).get("reason") or status.get("reason") or "Failed",
        )
        message = str((terminated or {}).get("message") or status.get("message") or "")
        return Diagnosis(
            InfraEventKind.FAILED, reason, message, _int((terminated or {}).get("exitCode"))
        )
    if phase == "Succeeded":
        return Diagnosis(InfraEventKind.SUCCEEDED, "Completed", "", 0)
    if phase == "Pending":
        waiting = next(
            (
                str(((c.get("state") or {}).get("waiting") or {}).get("reason") or "")
                for c in statuses
            ),
            "",
        )
        if waiting:
            message = f"the pod is pending ({waiting})"
        elif scheduled is not None and scheduled.get("status") == "True":
            message = "the pod is scheduled, waiting for its containers"
        else:
            message = "the pod is waiting to be scheduled"
        return Diagnosis(InfraEventKind.PENDING, "Pending", message)
    return None


def pull_error_is_final(verdict: Diagnosis) -> bool:
    """Whether an image pull error will not heal however long the pod waits."""
    if verdict.kind is not InfraEventKind.IMAGE_PULL_ERROR:
        return False
    if verdict.reason == "InvalidImageName":
        return True
    if verdict.reason not in ("ErrImagePull", "ImagePullBackOff"):
        return False  # ErrImageNeverPull: the image may yet be loaded onto the node
    return bool(_MISSING_IMAGE.search(verdict.message)) and not _MAY_HEAL.search(verdict.message)


def job_finished(job: Object) -> bool:
    """Whether the Job reached a final condition (Complete or Failed)."""
    conditions = (job.get("status") or {}).get("conditions")
    return any(_condition(conditions, kind, true_only=True) for kind in ("Complete", "Failed"))


def job_outcome(job: Object, pods: Iterable[Object]) -> Diagnosis | None:
    """How the attempt ended, or None while the Job may still run the engine."""
    conditions = (job.get("status") or {}).get("conditions")
    if any(
        _condition(conditions, kind, true_only=True) for kind in ("Complete", "SuccessCriteriaMet")
    ):
        return Diagnosis(InfraEventKind.SUCCEEDED, "Completed", "", 0)
    pods = list(pods)
    failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failure = _condition(conditions, "Failed", true_only=True) or _condition(
        conditions, "FailureTarget", true_only=True
    )
    if failure is None:
        if not failed_pods or not _no_retries_left(job):
            return None
        failure = {"reason": "BackoffLimitExceeded", "message": "the Job's only pod failed"}
    pod = latest_pod(failed_pods) or latest_pod(pods)
    verdict = diagnose_pod(pod) if pod is not None else None
    if verdict is not None and verdict.kind in (
        InfraEventKind.OOM_KILLED,
        InfraEventKind.EVICTED,
    ):
        return verdict
    job_reason = str(failure.get("reason") or "Failed")
    job_message = str(failure.get("message") or "")
    if verdict is not None and verdict.kind is InfraEventKind.FAILED:
        message = "; ".join(m for m in (verdict.message, job_message) if m)
        return Diagnosis(InfraEventKind.FAILED, verdict.reason, message, verdict.exit_code)
    # The Job failed without a failed pod to blame (activeDeadlineSeconds, a pod that never
    # started): the Job controller's reason is all there is.
    detail = f"{verdict.reason}: {verdict.message}" if verdict is not None else ""
    message = "; ".join(m for m in (job_message, detail) if m)
    return Diagnosis(InfraEventKind.FAILED, job_reason, message)


def job_deleted(job: Object, *, by_agent: bool) -> Diagnosis:
    """The verdict for a Job that was deleted before it finished."""
    name = (job.get("metadata") or {}).get("name", "?")
    who = "by the agent" if by_agent else "by someone else"
    return Diagnosis(InfraEventKind.DELETED, "Deleted", f"the Job {name} was deleted {who}")


def latest_pod(pods: Iterable[Object]) -> Object | None:
    """The most recently created pod (the one a Job's retries are on now)."""
    ordered = sorted(
        pods,
        key=lambda p: (
            str((p.get("metadata") or {}).get("creationTimestamp") or ""),
            str((p.get("metadata") or {}).get("name") or ""),
        ),
    )
    return ordered[-1] if ordered else None


def _no_retries_left(job: Object) -> bool:
    spec = job.get("spec") or {}
    if spec.get("podFailurePolicy"):
        return False  # the policy may ignore this failure; the Job controller decides
    # Kubernetes' default backoffLimit is 6.
    limit = _int(spec.get("backoffLimit"))
    return (6 if limit is None else limit) == 0


def _container_statuses(pod: Object) -> Iterable[Mapping[str, Any]]:
    status = pod.get("status") or {}
    yield from status.get("initContainerStatuses") or ()
    yield from status.get("containerStatuses") or ()


def _terminated(container: Mapping[str, Any]) -> Mapping[str, Any] | None:
    terminated = (container.get("state") or {}).get("terminated")
    if terminated is not None:
        return dict(terminated)
    last = (container.get("lastState") or {}).get("terminated")
    return dict(last) if last is not None else None


def _failed_container(statuses: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The terminated state to blame: a non-zero exit first, else any termination."""
    terminated = [t for t in (_terminated(c) for c in statuses) if t is not None]
    for state in terminated:
        if _int(state.get("exitCode")) not in (None, 0):
            return state
    return terminated[0] if terminated else None


def _condition(conditions: Any, kind: str, *, true_only: bool = False) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == kind:
            if true_only and condition.get("status") != "True":
                return None
            return dict(condition)
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
