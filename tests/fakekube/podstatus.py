"""Pod status as the kubelet reports it: phase, conditions and the container's state.

Faithful: the condition set (PodReadyToStartContainers, Initialized, Ready, ContainersReady,
plus PodScheduled from the scheduler and DisruptionTarget on eviction) with
``lastTransitionTime`` moving only on a change; ``containerStatuses`` entries with the fields the
client requires (``name``, ``image``, ``imageID``, ``ready``, ``restartCount``) and one of
``waiting``/``running``/``terminated``; exit codes of signalled processes as 128 + signal.
Simplified: ``imageID`` is a made-up digest of the image name.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.fakekube.store import timestamp

Obj = dict[str, Any]
HOST_IP = "127.0.0.1"


def exit_code(code: int | None) -> int:
    """A ``Popen.returncode`` as a container exit code: killed by signal N is 128 + N."""
    if code is None:
        return 137
    return code if code >= 0 else 128 - code


def set_condition(status: Obj, kind: str, value: str, reason: str = "", message: str = "") -> None:
    """Add or update one pod condition; ``lastTransitionTime`` moves only when ``value`` does."""
    conditions = status.setdefault("conditions", [])
    for condition in conditions:
        if condition["type"] == kind:
            if condition["status"] != value:
                condition["lastTransitionTime"] = timestamp()
            condition["status"] = value
            break
    else:
        condition = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": timestamp(),
        }
        conditions.append(condition)
    for key, text in (("reason", reason), ("message", message)):
        if text:
            condition[key] = text
        else:
            condition.pop(key, None)


def not_ready(status: Obj, reason: str) -> None:
    """The conditions of a pod whose container is no longer running."""
    set_condition(status, "Ready", "False", reason)
    set_condition(status, "ContainersReady", "False", reason)
    set_condition(status, "PodReadyToStartContainers", "False")


def pending(pod: Obj) -> None:
    """The status the kubelet reports when it first takes a bound pod: IPs, ContainerCreating."""
    status = pod["status"]
    status.update(
        hostIP=HOST_IP, hostIPs=[{"ip": HOST_IP}], podIP=HOST_IP, podIPs=[{"ip": HOST_IP}]
    )
    status.setdefault("startTime", timestamp())
    set_condition(status, "PodReadyToStartContainers", "True")
    set_condition(status, "Initialized", "True")
    set_condition(
        status,
        "Ready",
        "False",
        "ContainersNotReady",
        "containers with unready status: "
        f"[{' '.join(c['name'] for c in pod['spec']['containers'])}]",
    )
    set_condition(status, "ContainersReady", "False", "ContainersNotReady")
    set_container_state(pod, {"waiting": {"reason": "ContainerCreating"}}, ready=False)


def set_container_state(pod: Obj, state: Obj, *, ready: bool, container_id: str = "") -> None:
    """Set ``containerStatuses``: ``state`` for the first container, ContainerCreating for others."""
    statuses = []
    for index, container in enumerate(pod["spec"]["containers"]):
        image = container["image"]
        entry: Obj = {
            "name": container["name"],
            "image": image,
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {"waiting": {"reason": "ContainerCreating"}},
        }
        if index == 0:
            previous = (pod["status"].get("containerStatuses") or [{}])[0]
            entry.update(state=state, ready=ready, started="running" in state)
            cid = (
                container_id
                or previous.get("containerID", "")
                or (state.get("terminated") or {}).get("containerID", "")
            )
            if cid:
                entry["containerID"] = cid
                entry["imageID"] = _image_id(image)
        statuses.append(entry)
    pod["status"]["containerStatuses"] = statuses


def terminal(pod: Obj, phase: str, terminated: Obj) -> None:
    """Final status: ``phase`` Succeeded or Failed with the container's ``terminated`` state."""
    pod["status"]["phase"] = phase
    not_ready(pod["status"], "PodCompleted")
    set_container_state(pod, {"terminated": terminated}, ready=False)


def _image_id(image: str) -> str:
    repository = image.split("@")[0]
    name, _, tag = repository.rpartition(":")
    if not name or "/" in tag:
        name = repository
    return f"{name}@sha256:{uuid.uuid5(uuid.NAMESPACE_URL, image).hex * 2}"
