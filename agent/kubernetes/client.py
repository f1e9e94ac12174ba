"""The Kubernetes API as the runtime uses it: plain dicts in and out, errors as one exception.

:class:`KubeClient` is the interface the runtime and the watches depend on; tests give them
an in-memory implementation. :class:`ApiKubeClient` implements it with the official client,
which is synchronous: every call runs in a worker thread (``asyncio.to_thread``), and each
watch stream reads in a thread of its own that is shut down by closing its socket. Objects
are never turned into the client's models: the API's JSON is what the rest of the runtime
reads, so a field the models do not know is never lost.

Every call but a watch is retried on 429 (after Retry-After), 5xx and connection errors, as
:mod:`agent.kubernetes.retries` describes; whatever is left becomes a
:class:`~agent.errors.KubernetesError`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.watch.watch import iter_resp_lines

from agent import metrics
from agent.errors import ConfigurationError, KubernetesError
from agent.kubernetes.retries import with_retries
from agent.settings import ApiRetrySettings, KubernetesSettings

__all__ = [
    "ApiKubeClient",
    "KubeClient",
    "ObjectList",
    "Resource",
    "WatchEvent",
    "load_api_client",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Object = dict[str, Any]

# Connect timeout of every request, and how long a plain request may take to answer.
_CONNECT_TIMEOUT = 10.0
_REQUEST_TIMEOUT = 30.0
# A watch's read timeout is its server-side timeout plus this: a silent, half-open
# connection is noticed instead of blocking a thread forever.
_WATCH_READ_MARGIN = 30.0


class Resource(enum.Enum):
    """The kinds of object the runtime reads and writes."""

    JOBS = "jobs"
    PODS = "pods"
    SECRETS = "secrets"


@dataclass(frozen=True)
class ObjectList:
    """The result of a list: the objects, and the resourceVersion to watch from."""

    items: list[Object]
    resource_version: str


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch stream: ADDED, MODIFIED, DELETED or BOOKMARK."""

    type: str
    object: Object


class KubeClient(abc.ABC):
    """The Kubernetes API calls the runtime needs, on dicts."""

    @abc.abstractmethod
    async def create(self, resource: Resource, namespace: str, body: Object) -> Object:
        """Create an object; 409 AlreadyExists is raised like any other error."""

    @abc.abstractmethod
    async def read(self, resource: Resource, namespace: str, name: str) -> Object | None:
        """The object, or None if it does not exist."""

    @abc.abstractmethod
    async def patch(self, resource: Resource, namespace: str, name: str, patch: Object) -> Object:
        """Apply a strategic merge patch and return the patched object."""

    @abc.abstractmethod
    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete with background propagation (dependents go too); False if it did not exist."""

    @abc.abstractmethod
    async def list(self, resource: Resource, namespace: str, selector: str) -> ObjectList:
        """The objects matching a label selector in one namespace."""

    @abc.abstractmethod
    async def list_all_namespaces(self, resource: Resource, selector: str) -> ObjectList:
        """The objects matching a label selector in every namespace (needs a ClusterRole)."""

    @abc.abstractmethod
    def watch(
        self,
        resource: Resource,
        namespace: str,
        selector: str,
        resource_version: str,
        timeout_seconds: float,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes after ``resource_version`` until the server ends the stream.

        The server ends it after ``timeout_seconds`` at the latest.

        An ERROR event is raised as :class:`~agent.errors.KubernetesError` (410 when the
        resourceVersion is too old); so is a broken connection (status 0).
        """

    @abc.abstractmethod
    async def log_tail(self, namespace: str, pod: str, container: str | None, lines: int) -> str:
        """The last ``lines`` lines of a container's log."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""


def load_api_client(settings: KubernetesSettings) -> Any:
    """The official client's ``ApiClient`` for the configured cluster (blocking: file reads).

    Raises :class:`~agent.errors.ConfigurationError` when no usable configuration exists.
    """
    try:
        if settings.kubeconfig is not None:
            return k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=settings.kubeconfig, persist_config=False
            )
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return k8s.ApiClient(configuration)
    except k8s_config.ConfigException as error:
        where = (
            f"kubeconfig {settings.kubeconfig}"
            if settings.kubeconfig is not None
            else "the in-cluster service account (pass --kubeconfig or set KUBECONFIG "
            "when running outside Kubernetes)"
        )
        raise ConfigurationError(
            f"cannot load the Kubernetes configuration from {where}: {error}"
        ) from error
    except (OSError, ValueError) as error:
        raise ConfigurationError(
            f"cannot load the Kubernetes configuration from {settings.kubeconfig}: {error}"
        ) from error


class ApiKubeClient(KubeClient):
    """:class:`KubeClient` on the official ``kubernetes`` client, off the event loop."""

    def __init__(self, api_client: Any, retry: ApiRetrySettings) -> None:
        self._api_client = api_client
        self._batch = k8s.BatchV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._retry = retry

    async def create(self, resource: Resource, namespace: str, body: Object) -> Object:
        """Create an object."""
        create = self._method(resource, "create_namespaced_{}")
        return await self._call(
            "create",
            f"create {resource.value} in {namespace}",
            lambda: _json(create(namespace, body, **_plain())),
        )

    async def read(self, resource: Resource, namespace: str, name: str) -> Object | None:
        """The object, or None."""
        read = self._method(resource, "read_namespaced_{}")
        try:
            return await self._call(
                "read",
                f"read {resource.value} {namespace}/{name}",
                lambda: _json(read(name, namespace, **_plain())),
            )
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise

    async def patch(self, resource: Resource, namespace: str, name: str, patch: Object) -> Object:
        """Strategic merge patch."""
        method = self._method(resource, "patch_namespaced_{}")
        return await self._call(
            "patch",
            f"patch {resource.value} {namespace}/{name}",
            lambda: _json(method(name, namespace, patch, **_plain())),
        )

    async def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete in the background; False on 404."""
        delete = self._method(resource, "delete_namespaced_{}")
        try:
            await self._call(
                "delete",
                f"delete {resource.value} {namespace}/{name}",
                lambda: delete(name, namespace, propagation_policy="Background", **_plain()),
            )
        except KubernetesError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def list(self, resource: Resource, namespace: str, selector: str) -> ObjectList:
        """List by label selector."""
        method = self._method(resource, "list_namespaced_{}")
        body = await self._call(
            "list",
            f"list {resource.value} in {namespace}",
            lambda: _json(method(namespace, label_selector=selector, **_plain())),
        )
        return ObjectList(
            items=list(body.get("items") or []),
            resource_version=str((body.get("metadata") or {}).get("resourceVersion", "")),
        )

    async def list_all_namespaces(self, resource: Resource, selector: str) -> ObjectList:
        """List by label selector across namespaces."""
        method = self._method(resource, "list_{}_for_all_namespaces")
        body = await self._call(
            "list",
            f"list {resource.value} in all namespaces",
            lambda: _json(method(label_selector=selector, **_plain())),
        )
        return ObjectList(
            items=list(body.get("items") or []),
            resource_version=str((body.get("metadata") or {}).get("resourceVersion", "")),
        )

    async def watch(
        self,
        resource: Resource,
        namespace: str,
        selector: str,
        resource_version: str,
        timeout_seconds: float,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream events from a thread that reads the HTTP response line by line."""
        method = self._method(resource, "list_namespaced_{}")
        seconds = max(1, int(timeout_seconds))

        def open_stream() -> Any:
            return method(
                namespace,
                label_selector=selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                watch=True,
                timeout_seconds=seconds,
                _preload_content=False,
                _request_timeout=(_CONNECT_TIMEOUT, seconds + _WATCH_READ_MARGIN),
            )

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchEvent | KubernetesError | None] = asyncio.Queue()

        def deliver(item: WatchEvent | KubernetesError | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        stream = _WatchStream(open_stream, deliver)
        stream.start(f"kube-watch:{resource.value}/{namespace}")
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, KubernetesError):
                    raise item
                yield item
        finally:
            stream.stop()

    async def log_tail(self, namespace: str, pod: str, container: str | None, lines: int) -> str:
        """The container's last log lines."""
        extra: dict[str, Any] = {"container": container} if container else {}
        data = await self._call(
            "log",
            f"read the log of pod {namespace}/{pod}",
            lambda: _body(
                self._core.read_namespaced_pod_log(
                    pod, namespace, tail_lines=lines, **extra, **_plain()
                )
            ),
        )
        return data.decode("utf-8", errors="replace")

    async def close(self) -> None:
        """Close the connection pool."""
        await asyncio.to_thread(self._api_client.close)

    def _method(self, resource: Resource, pattern: str) -> Callable[..., Any]:
        api = self._batch if resource is Resource.JOBS else self._core
        singular = {Resource.JOBS: "job", Resource.PODS: "pod", Resource.SECRETS: "secret"}
        method: Callable[..., Any] = getattr(api, pattern.format(singular[resource]))
        return method

    async def _call(self, verb: str, what: str, call: Callable[[], T]) -> T:
        seconds = metrics.API_SECONDS.labels(verb)

        async def attempt() -> T:
            started = time.perf_counter()
            try:
                return await asyncio.to_thread(_translated, call)
            except KubernetesError as error:
                metrics.API_ERRORS.labels(verb, str(error.status)).inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        return await with_retries(attempt, self._retry, what=what)


def _plain() -> dict[str, Any]:
    """Keyword arguments for a call that returns the raw HTTP response, with timeouts."""
    return {"_preload_content": False, "_request_timeout": (_CONNECT_TIMEOUT, _REQUEST_TIMEOUT)}


def _body(response: Any) -> bytes:
    data: bytes = response.data or b""
    return data


def _json(response: Any) -> Object:
    body: Object = json.loads(_body(response) or b"{}")
    return body


def _translated(call: Callable[[], T]) -> T:
    """Run one blocking call; whatever goes wrong comes out as a KubernetesError."""
    try:
        return call()
    except k8s.ApiException as error:
        raise _api_error(error) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise KubernetesError(0, "ConnectionError", str(error)) from None
    except ValueError as error:
        # The client validates bodies against its models before sending anything.
        raise KubernetesError(422, "Invalid", _first_line(str(error))) from None


def _api_error(error: Any) -> KubernetesError:
    """A KubernetesError from the client's ApiException, with the API's Status if present."""
    status = int(error.status or 0)
    reason = str(error.reason or "")
    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = json.loads(error.body)
        reason = str(body.get("reason") or reason)
        message = str(body.get("message") or "")
    return KubernetesError(status, reason or "Error", message, _retry_after(error.headers))


def _status_error(status: Object) -> KubernetesError:
    """A KubernetesError from a watch's ERROR event (a Status object)."""
    return KubernetesError(
        int(status.get("code") or 0),
        str(status.get("reason") or "Error"),
        str(status.get("message") or ""),
    )


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from Kubernetes; fall back to our own backoff


def _first_line(text: str) -> str:
    return " ".join(text.split())[:500]


class _WatchStream:
    """One watch request read in a dedicated thread, its events handed to ``deliver``.

    The thread is not from the default executor, so a long watch never takes a slot from
    short calls. Stopping shuts the socket down, which unblocks the thread's read at once;
    a thread still connecting ends by its own timeouts and delivers nothing more.
    """

    def __init__(
        self,
        open_stream: Callable[[], Any],
        deliver: Callable[[WatchEvent | KubernetesError | None], None],
    ) -> None:
        self._open = open_stream
        self._deliver = deliver
        self._stopped = threading.Event()
        self._response: Any = None

    def start(self, name: str) -> None:
        threading.Thread(target=self._read, name=name, daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        connection = getattr(self._response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _read(self) -> None:
        deliver = self._deliver
        try:
            self._response = self._open()
            for line in iter_resp_lines(self._response):  # type: ignore[no-untyped-call]
                if self._stopped.is_set():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = str(event.get("type", ""))
                obj = event.get("object") or {}
                if kind == "ERROR":
                    deliver(_status_error(obj))
                    return
                deliver(WatchEvent(kind, obj))
            deliver(None)
        except k8s.ApiException as error:
            if not self._stopped.is_set():
                deliver(_api_error(error))
        except Exception as error:
            if not self._stopped.is_set():
                deliver(KubernetesError(0, "WatchBroken", f"{type(error).__name__}: {error}"))
        finally:
            if self._response is not None:
                with contextlib.suppress(Exception):
                    self._response.close()
                    self._response.release_conn()
