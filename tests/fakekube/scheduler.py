"""The scheduler for the one fake node: binds pods that fit, leaves the rest Unschedulable.

Faithful: resource ``requests`` (defaulted from limits) in Kubernetes quantities (``500m``,
``2``, ``1Gi``, ``512Mi``, ``1e3``...) summed over every non-terminal pod bound to the node;
a pod that does not fit stays Pending with condition ``PodScheduled`` False, reason
``Unschedulable``, message ``0/1 nodes are available: 1 Insufficient cpu. ...`` and a
``FailedScheduling`` Event, and is bound as soon as room frees up; binding sets
``spec.nodeName``, ``PodScheduled`` True and a ``Scheduled`` Event.
Simplified: one node; nodeSelector, affinity, taints/tolerations and priorities are ignored;
init-container requests are not counted.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from tests.fakekube import errors
from tests.fakekube.events import EventRecorder
from tests.fakekube.resources import PODS
from tests.fakekube.store import Store, timestamp

Obj = dict[str, Any]
NODE_NAME = "fake-node"
RESOURCES = ("cpu", "memory")
SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity as a number (cores for cpu, bytes for memory)."""
    match = QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"quantities must match the regular expression {QUANTITY.pattern!r}")
    return Decimal(match[1]) * SUFFIXES[match[2]]


def pod_requests(pod: Obj) -> dict[str, Decimal]:
    """The pod's summed container requests, in cores and bytes."""
    totals = dict.fromkeys(RESOURCES, Decimal(0))
    for container in pod.get("spec", {}).get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        for name in RESOURCES:
            if name in requests:
                totals[name] += parse_quantity(requests[name])
    return totals


class Scheduler:
    """Binds pending pods to ``fake-node`` while their requests fit its capacity."""

    def __init__(self, store: Store, recorder: EventRecorder, cpu: str, memory: str) -> None:
        self._store = store
        self._recorder = recorder
        self._capacity = {"cpu": parse_quantity(cpu), "memory": parse_quantity(memory)}

    def sync(self) -> None:
        """Bind every pending pod that fits; mark the others Unschedulable."""
        pods, _ = self._store.list(PODS, None)
        used = dict.fromkeys(RESOURCES, Decimal(0))
        for pod in pods:
            if pod["spec"].get("nodeName") == NODE_NAME and pod["status"].get("phase") not in (
                "Succeeded",
                "Failed",
            ):
                for name, amount in pod_requests(pod).items():
                    used[name] += amount
        for pod in pods:
            if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            requests = pod_requests(pod)
            short = [r for r in RESOURCES if used[r] + requests[r] > self._capacity[r]]
            try:
                if short:
                    self._unschedulable(pod, short)
                else:
                    self._bind(pod)
                    for name in RESOURCES:
                        used[name] += requests[name]
            except errors.ApiError as error:
                # 404: deleted since the list (its Job removed); the next sync no longer sees
                # it, as the real scheduler forgets a pod that went away.
                if error.code != 404:
                    raise

    def _unschedulable(self, pod: Obj, short: list[str]) -> None:
        reasons = ", ".join(f"1 Insufficient {name}" for name in short)
        message = (
            f"0/1 nodes are available: {reasons}. preemption: 0/1 nodes are available: "
            "1 No preemption victims found for incoming pod."
        )
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": timestamp(),
        }
        existing = [c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"]
        if existing and existing[0].get("message") == message:
            return

        def mark(current: Obj) -> None:
            others = [
                c for c in current["status"].get("conditions", []) if c["type"] != "PodScheduled"
            ]
            current["status"]["conditions"] = [*others, condition]

        meta = pod["metadata"]
        self._store.update(PODS, meta["namespace"], meta["name"], mark, subresource="status")
        self._recorder.warning(pod, "FailedScheduling", message)

    def _bind(self, pod: Obj) -> None:
        meta = pod["metadata"]

        def bind(current: Obj) -> None:
            current["spec"]["nodeName"] = NODE_NAME
            others = [
                c for c in current["status"].get("conditions", []) if c["type"] != "PodScheduled"
            ]
            scheduled = {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": timestamp(),
            }
            current["status"]["conditions"] = [*others, scheduled]

        bound = self._store.update(
            PODS, meta["namespace"], meta["name"], bind, subresource="binding"
        )
        self._recorder.normal(
            bound,
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {NODE_NAME}",
        )
