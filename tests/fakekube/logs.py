"""``GET /api/v1/namespaces/{ns}/pods/{name}/log``: container output as the API server proxies it.

Faithful: plain-text body; ``follow=true`` streams (chunked) until the container ends;
``tailLines``, ``limitBytes`` and ``container``; 400 BadRequest ``container "c" in pod "p" is
waiting to start: ContainerCreating`` (or ``image can't be pulled``,
``CreateContainerConfigError``), ``a container name must be specified for pod p, choose one
of: [...]``, ``container c is not valid for pod p``; an empty body for a pod not yet bound to a
node. Simplified: ``timestamps``, ``sinceSeconds``, ``sinceTime``, ``previous`` and ``stream``
are ignored; stdout and stderr are one stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakekube import errors
from tests.fakekube.kubelet import Kubelet, Runtime
from tests.fakekube.resources import PODS
from tests.fakekube.store import Store

POLL = 0.05
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff")


@dataclass
class LogSource:
    """Where a container's output is, and whether more may still come."""

    path: Path | None
    runtime: Runtime | None

    def more_may_come(self) -> bool:
        """Whether the container is still running, so the log may grow."""
        return self.runtime is not None and self.runtime.running()


def open_log(
    store: Store, kubelet: Kubelet, namespace: str, name: str, container: str | None
) -> LogSource:
    """Check the request the way the API server and kubelet do; raise ``ApiError`` if refused."""
    pod = store.get(PODS, namespace, name)
    names = [c["name"] for c in pod["spec"]["containers"]]
    if container is None:
        if len(names) != 1:
            raise errors.bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
            )
        container = names[0]
    elif container not in names:
        raise errors.bad_request(f"container {container} is not valid for pod {name}")
    if not pod["spec"].get("nodeName"):
        return LogSource(None, None)
    statuses = pod.get("status", {}).get("containerStatuses") or []
    state: dict[str, Any] = next((s["state"] for s in statuses if s["name"] == container), {})
    if "waiting" in state or not state:
        reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
        reason = "image can't be pulled" if reason in PULL_FAILURES else reason
        raise errors.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start: {reason}'
        )
    runtime = kubelet.runtime(pod["metadata"]["uid"])
    if runtime is None or container != names[0]:
        return LogSource(None, None)
    return LogSource(runtime.log_path, runtime)


def stream(
    source: LogSource,
    write: Callable[[bytes], None],
    *,
    follow: bool,
    tail_lines: int | None,
    limit_bytes: int | None,
    stopping: Callable[[], bool],
) -> None:
    """Write the log (and, with ``follow``, what is appended until the container ends)."""
    if source.path is None or not source.path.exists():
        return
    budget = limit_bytes if limit_bytes is not None else -1

    def emit(data: bytes) -> bool:
        nonlocal budget
        if budget >= 0:
            data = data[:budget]
            budget -= len(data)
        if data:
            write(data)
        return budget != 0

    with source.path.open("rb") as log:
        if tail_lines is not None:
            lines = log.read().splitlines(keepends=True)
            if not emit(b"".join(lines[-tail_lines:] if tail_lines > 0 else [])):
                return
        while True:
            alive = source.more_may_come()
            chunk = log.read(65536)
            if chunk:
                if not emit(chunk):
                    return
                continue
            if not follow or not alive or stopping():
                return
            time.sleep(POLL)
