"""The kubelet of ``fake-node``: runs each bound pod's first container as a local process.

Faithful: the pod status a client watches (phase Pending -> Running -> Succeeded/Failed;
``containerStatuses[0]`` waiting/running/terminated with ``exitCode``, ``reason`` Completed,
Error, OOMKilled (exit 137 not caused by the kubelet) or StartError, ``startedAt``/``finishedAt``;
Ready/ContainersReady/Initialized/PodReadyToStartContainers conditions; ``podIP``/``hostIP``
127.0.0.1, ``startTime``); images matching ``failing_images`` alternate ErrImagePull and
ImagePullBackOff and never start, with containerd's messages (``not found``; others time out,
get 429 or 401: see :mod:`tests.fakekube.images`), and an image that does not parse waits in
InvalidImageName; ``env``/``envFrom`` from Secrets and ConfigMaps (missing ones
give CreateContainerConfigError, retried every 0.5 s until they appear), ``fieldRef`` and
``$(VAR)`` expansion; graceful deletion (SIGTERM to the process group, SIGKILL after the grace
period, then the pod object is removed); when the main process exits the rest of its process group
is killed, as the container's PID namespace would be; node-pressure eviction (phase Failed,
reason Evicted, condition DisruptionTarget); ``FallbackToLogsOnError`` termination messages;
Pulling/Pulled/Created/Started/Killing/Failed/BackOff/Evicted Events.
Simplified: only the first container runs, with its ``command`` + ``args`` (there is no image
entrypoint), env = this process's environment + the container's; the grace period is capped at
5 s; there are no restarts, probes, volumes or init containers; image back-off is a fixed 1 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakekube import environment, errors, images, podstatus
from tests.fakekube.events import EventRecorder
from tests.fakekube.resources import PODS
from tests.fakekube.scheduler import NODE_NAME
from tests.fakekube.store import Store, timestamp

Obj = dict[str, Any]
log = logging.getLogger(__name__)
MAX_GRACE = 5.0
PULL_RETRY = 1.0
CONFIG_RETRY = 0.5
EVICTION_MESSAGE = "The node was low on resource: memory."


@dataclass
class Runtime:
    """What the kubelet knows about one pod beyond its API object."""

    uid: str
    namespace: str
    name: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    container_id: str = ""
    next_attempt: float = 0.0
    pull_failed: bool = False
    invalid_image: bool = False
    kill_at: float | None = None
    killed: bool = False
    finished: bool = False
    initialized: bool = False
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "container.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Kubelet:
    """Reconciles the pods bound to ``fake-node`` with local processes."""

    def __init__(
        self, store: Store, recorder: EventRecorder, workdir: Path, failing_images: str
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._workdir = workdir
        self._failing = re.compile(failing_images)
        self._environment = environment.Environment(store)
        self._lock = threading.RLock()
        self._runtimes: dict[str, Runtime] = {}

    def runtime(self, uid: str) -> Runtime | None:
        """The kubelet's record of the pod with this uid, if it has taken it."""
        with self._lock:
            return self._runtimes.get(uid)

    def sync(self) -> None:
        """Move every pod bound to this node one step towards its desired state."""
        pods, _ = self._store.list(PODS, None)
        with self._lock:
            mine = {p["metadata"]["uid"]: p for p in pods if p["spec"].get("nodeName") == NODE_NAME}
            for uid, pod in mine.items():
                meta = pod["metadata"]
                directory = self._workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{uid[:8]}"
                runtime = self._runtimes.setdefault(
                    uid, Runtime(uid, meta["namespace"], meta["name"], directory)
                )
                try:
                    self._step(pod, runtime)
                except errors.ApiError as error:
                    # 404: the pod went away mid-step; the next sync forgets it.
                    if error.code != 404:
                        raise
            for uid in set(self._runtimes) - set(mine):
                self._kill(self._runtimes.pop(uid), signal.SIGKILL)

    def evict(self, namespace: str, name: str) -> None:
        """Node-pressure eviction: kill at once, pod Failed with reason Evicted."""
        with self._lock:
            pod = self._store.get(PODS, namespace, name)
            runtime = self._runtimes.get(pod["metadata"]["uid"])
            was_running = runtime is not None and runtime.running()
            if runtime is not None:
                runtime.killed = runtime.finished = True
                self._kill(runtime, signal.SIGKILL)
            self._recorder.warning(pod, "Evicted", EVICTION_MESSAGE)

            def evicted(current: Obj) -> None:
                status = current["status"]
                status.update(phase="Failed", reason="Evicted", message=EVICTION_MESSAGE)
                podstatus.set_condition(
                    status, "DisruptionTarget", "True", "TerminationByKubelet", EVICTION_MESSAGE
                )
                podstatus.not_ready(status, "PodFailed")
                code = runtime.process.returncode if runtime and runtime.process else None
                terminated = {"exitCode": 137, "reason": "Error", "finishedAt": timestamp()}
                if was_running and runtime is not None:
                    terminated.update(
                        exitCode=podstatus.exit_code(code),
                        startedAt=runtime.started_at,
                        containerID=runtime.container_id,
                    )
                else:
                    terminated.update(
                        reason="ContainerStatusUnknown",
                        message="The container could not be located when the pod was terminated",
                    )
                podstatus.set_container_state(current, {"terminated": terminated}, ready=False)

            self._store.update(PODS, namespace, name, evicted, subresource="status")

    def stop(self) -> None:
        """Kill every process this kubelet started; used on cluster shutdown."""
        with self._lock:
            for runtime in self._runtimes.values():
                self._kill(runtime, signal.SIGKILL)

    def pids(self) -> list[int]:
        """Process ids of every pod process started, running or not."""
        with self._lock:
            return [r.process.pid for r in self._runtimes.values() if r.process is not None]

    def _step(self, pod: Obj, runtime: Runtime) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            self._terminate(pod, runtime)
        elif runtime.finished:
            return
        elif runtime.process is not None:
            code = runtime.process.poll()
            if code is not None:
                self._finished(pod, runtime, code)
        elif time.monotonic() >= runtime.next_attempt:
            if not runtime.initialized:
                runtime.initialized = True
                self._update(pod, podstatus.pending)
            container = pod["spec"]["containers"][0]
            invalid = images.invalid_reference(container["image"])
            if invalid is not None:
                self._invalid_image(pod, runtime, invalid)
                return
            failure = images.pull_error(container["image"], self._failing)
            if failure is not None:
                self._pull_failed(pod, runtime, container["image"], failure)
                return
            try:
                env = self._environment.resolve(pod, container)
            except environment.ConfigError as error:
                runtime.next_attempt = time.monotonic() + CONFIG_RETRY
                self._waiting(pod, "CreateContainerConfigError", str(error))
                self._recorder.warning(pod, "Failed", f"Error: {error}", _field(container))
                return
            self._start(pod, runtime, container, env)

    def _pull_failed(self, pod: Obj, runtime: Runtime, image: str, message: str) -> None:
        container = pod["spec"]["containers"][0]
        path = _field(container)
        runtime.next_attempt = time.monotonic() + PULL_RETRY
        if runtime.pull_failed:
            backoff = f'Back-off pulling image "{image}"'
            self._waiting(pod, "ImagePullBackOff", backoff)
            self._recorder.normal(pod, "BackOff", backoff, path)
            self._recorder.warning(pod, "Failed", "Error: ImagePullBackOff", path)
        else:
            self._recorder.normal(pod, "Pulling", f'Pulling image "{image}"', path)
            self._waiting(pod, "ErrImagePull", message)
            self._recorder.warning(
                pod, "Failed", f'Failed to pull image "{image}": {message}', path
            )
            self._recorder.warning(pod, "Failed", "Error: ErrImagePull", path)
        runtime.pull_failed = not runtime.pull_failed

    def _invalid_image(self, pod: Obj, runtime: Runtime, message: str) -> None:
        """No pull is ever tried: the container waits in InvalidImageName until deleted."""
        runtime.next_attempt = time.monotonic() + PULL_RETRY
        if runtime.invalid_image:
            return
        runtime.invalid_image = True
        path = _field(pod["spec"]["containers"][0])
        self._waiting(pod, "InvalidImageName", message)
        self._recorder.warning(pod, "InspectFailed", message, path)
        self._recorder.warning(pod, "Failed", "Error: InvalidImageName", path)

    def _start(self, pod: Obj, runtime: Runtime, container: Obj, env: dict[str, str]) -> None:
        path = _field(container)
        argv = [environment.expand(str(a), env) for a in (container.get("command") or [])]
        argv += [environment.expand(str(a), env) for a in (container.get("args") or [])]
        self._recorder.normal(
            pod,
            "Pulled",
            f'Container image "{container["image"]}" already present on machine',
            path,
        )
        runtime.directory.mkdir(parents=True, exist_ok=True)
        runtime.container_id = f"containerd://{uuid.uuid4().hex}"
        runtime.started_at = timestamp()
        if not argv:
            self._start_failed(pod, runtime, "the fake kubelet runs only containers with a command")
            return
        cwd = container.get("workingDir") or str(runtime.directory)
        try:
            with runtime.log_path.open("ab") as output:
                runtime.process = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env={**os.environ, "HOSTNAME": pod["metadata"]["name"], **env},
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as error:
            if error.filename == cwd:
                message = f'chdir to cwd ("{cwd}") set in config.json failed: {error.strerror}'
            elif isinstance(error, FileNotFoundError):
                message = f'exec: "{argv[0]}": executable file not found in $PATH'
            else:
                message = f'exec: "{argv[0]}": {error.strerror}'
            self._start_failed(pod, runtime, message)
            return
        self._recorder.normal(pod, "Created", f"Created container: {container['name']}", path)
        self._recorder.normal(pod, "Started", f"Started container {container['name']}", path)

        def running(current: Obj) -> None:
            status = current["status"]
            status["phase"] = "Running"
            for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"):
                podstatus.set_condition(status, kind, "True")
            state = {"running": {"startedAt": runtime.started_at}}
            podstatus.set_container_state(
                current, state, ready=True, container_id=runtime.container_id
            )

        self._update(pod, running)

    def _start_failed(self, pod: Obj, runtime: Runtime, message: str) -> None:
        runtime.finished = True
        container = pod["spec"]["containers"][0]
        self._recorder.warning(pod, "Failed", f"Error: {message}", _field(container))
        terminated = {
            "exitCode": 128,
            "reason": "StartError",
            "message": message,
            "startedAt": runtime.started_at,
            "finishedAt": timestamp(),
            "containerID": runtime.container_id,
        }
        self._update(pod, lambda current: podstatus.terminal(current, "Failed", terminated))

    def _finished(self, pod: Obj, runtime: Runtime, code: int) -> None:
        runtime.finished = True
        self._kill(runtime, signal.SIGKILL)  # the rest of the "container"
        exit_code = podstatus.exit_code(code)
        if exit_code == 0:
            reason = "Completed"
        elif exit_code == 137 and not runtime.killed:
            reason = "OOMKilled"
        else:
            reason = "Error"
        terminated: Obj = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": runtime.started_at,
            "finishedAt": timestamp(),
            "containerID": runtime.container_id,
        }
        container = pod["spec"]["containers"][0]
        if exit_code and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = runtime.log_path.read_bytes()[-2048:].decode(errors="replace")
            terminated["message"] = "\n".join(tail.splitlines()[-80:])
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self._update(pod, lambda current: podstatus.terminal(current, phase, terminated))

    def _terminate(self, pod: Obj, runtime: Runtime) -> None:
        if runtime.running():
            if runtime.kill_at is None:
                grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
                runtime.kill_at = time.monotonic() + min(float(grace), MAX_GRACE)
                runtime.killed = True
                container = pod["spec"]["containers"][0]
                self._recorder.normal(
                    pod, "Killing", f"Stopping container {container['name']}", _field(container)
                )
                self._kill(runtime, signal.SIGTERM)
            elif time.monotonic() >= runtime.kill_at:
                self._kill(runtime, signal.SIGKILL)
            return
        if runtime.process is not None and not runtime.finished:
            self._finished(pod, runtime, runtime.process.returncode)
        meta = pod["metadata"]
        self._store.remove(PODS, meta["namespace"], meta["name"], meta["uid"])
        self._runtimes.pop(meta["uid"], None)

    @staticmethod
    def _kill(runtime: Runtime, sig: signal.Signals) -> None:
        process = runtime.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        if sig == signal.SIGKILL:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning(
                    "pod %s/%s: process %d survived SIGKILL",
                    runtime.namespace,
                    runtime.name,
                    process.pid,
                )

    def _waiting(self, pod: Obj, reason: str, message: str) -> None:
        self._update(
            pod,
            lambda current: podstatus.set_container_state(
                current, {"waiting": {"reason": reason, "message": message}}, ready=False
            ),
        )

    def _update(self, pod: Obj, change: Any) -> None:
        meta = pod["metadata"]
        self._store.update(PODS, meta["namespace"], meta["name"], change, subresource="status")


def _field(container: Obj) -> str:
    return f"spec.containers{{{container['name']}}}"
