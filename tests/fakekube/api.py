"""The REST API: routes a request to a store operation and answers like the kube-apiserver.

Faithful: paths (namespaced and cluster-wide lists, ``/status``, ``/log``), verbs (list, watch,
get, create, replace, patch, delete, deletecollection), the response bodies (``JobList`` with
``metadata.resourceVersion`` and items without kind/apiVersion; the created/patched object;
for delete, the deleted pod, or a ``Status`` Success for kinds that do not return the deleted
object, or the object itself while finalizers hold it, as after a Foreground or Orphan delete
of a Job), ``limit``/``continue``, ``dryRun=All``, and the Warning header the real server adds
when a Job is deleted without a propagation policy. Watches: ``resourceVersion`` unset or "0"
starts with ADDED for every current object, otherwise replays the history after that version;
then live changes, filtered by namespace and selectors (an object that stops matching arrives
as DELETED, one that starts matching as ADDED, like the watch cache does); too old a version is
an ``ERROR`` event carrying a 410 Expired ``Status``; ``timeoutSeconds`` ends the stream.
With ``allowWatchBookmarks``, a BOOKMARK carrying the current resource version comes 2 s before
``timeoutSeconds`` runs out (when the timeout is longer than that) and after every idle minute.
Simplified: ``continue`` tokens are plain offsets into the current
list; a list ``resourceVersion`` older than the last compaction answers 410 (the real server
would usually serve it from its watch cache); namespaces always exist.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tests.fakekube import errors, logs, patches
from tests.fakekube.faults import Faults
from tests.fakekube.kubelet import Kubelet
from tests.fakekube.resources import BY_PATH, JOBS, PODS, Resource
from tests.fakekube.selectors import Selector
from tests.fakekube.store import Store, timestamp

Obj = dict[str, Any]
JOB_DELETE_WARNING = (
    '299 - "child pods are preserved by default when jobs are deleted; set '
    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress "
    'this warning"'
)
POLICIES = ("Foreground", "Background", "Orphan")
BOOKMARK_EVERY = 60.0


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Route:
    """Which resource, namespace, object and subresource a path names."""

    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


class Responder(Protocol):
    """How the API answers: a whole JSON body, or a chunked stream."""

    def send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None: ...
    def send_text(self, code: int, body: bytes) -> None: ...
    def start_stream(self, content_type: str) -> None: ...
    def chunk(self, data: bytes) -> None: ...
    def end_stream(self) -> None: ...
    def abort(self) -> None: ...


def not_routable() -> errors.ApiError:
    """The 404 the server answers for a path it does not serve."""
    return errors.ApiError(404, "NotFound", "the server could not find the requested resource", {})


class Api:
    """The operations behind every path; all state lives in the store and the kubelet."""

    def __init__(self, store: Store, kubelet: Kubelet, faults: Faults) -> None:
        self._store = store
        self._kubelet = kubelet
        self._faults = faults

    def serve(self, request: Request, route: Route, out: Responder) -> None:
        """Answer one request for ``route`` (raises ``ApiError`` before any output)."""
        method, sub = request.method, route.subresource
        if route.namespace is None and self._faults.cluster_scope_denied:
            verb = "watch" if request.query.get("watch") in ("1", "true", "True") else "list"
            raise errors.forbidden_cluster_scope(route.resource, verb)
        if route.name is None:
            if method == "GET":
                if request.query.get("watch") in ("1", "true", "True"):
                    self._watch(request, route, out)
                else:
                    self._list(request, route, out)
                return
            if route.namespace is None:
                raise not_routable()
            if method == "POST":
                hold = self._faults.held(route.resource.plural)
                if hold is not None:
                    hold.arrived.set()
                    hold.released.wait(timeout=60)  # a failed test must not wedge the server
                    if not hold.apply:
                        out.abort()
                        return
                body = self._create(request, route)
                out.send_json(201, body)
            elif method == "DELETE":
                self._delete_collection(request, route, out)
            else:
                raise _method_not_allowed(method)
            return
        if route.namespace is None:
            raise not_routable()
        if sub is None or (sub == "status" and route.resource.has_status):
            self._item(request, route, out)
        elif sub == "log" and route.resource is PODS and method == "GET":
            self._log(request, route, out)
        else:
            raise not_routable()

    def _item(self, request: Request, route: Route, out: Responder) -> None:
        resource, namespace, name = route.resource, route.namespace or "", route.name or ""
        dry_run = request.query.get("dryRun") == "All"
        if request.method == "GET":
            out.send_json(200, self._store.get(resource, namespace, name))
        elif request.method == "PUT":
            body = _decode(request.body)
            if not isinstance(body, dict):
                raise errors.bad_request("the body of the request must be a JSON object")
            given = (body.get("metadata") or {}).get("name")
            if given != name:
                raise errors.bad_request(
                    f"the name of the object ({given}) does not match the name on the URL ({name})"
                )
            updated = self._store.update(
                resource,
                namespace,
                name,
                lambda _: body,
                subresource=route.subresource,
                dry_run=dry_run,
            )
            out.send_json(200, updated)
        elif request.method == "PATCH":
            patch = _decode(request.body)
            updated = self._store.update(
                resource,
                namespace,
                name,
                lambda current: patches.apply(request.content_type, current, patch),
                subresource=route.subresource,
                dry_run=dry_run,
            )
            out.send_json(200, updated)
        elif request.method == "DELETE" and route.subresource is None:
            self._delete(request, route, out, dry_run)
        else:
            raise _method_not_allowed(request.method)

    def _create(self, request: Request, route: Route) -> Obj:
        body = _decode(request.body)
        dry_run = request.query.get("dryRun") == "All"
        return self._store.create(route.resource, route.namespace or "", body, dry_run=dry_run)

    def _list(self, request: Request, route: Route, out: Responder) -> None:
        selector = _selector(request)
        requested = request.query.get("resourceVersion", "")
        if requested not in ("", "0"):
            self._store.history.check(_revision(requested))
        items, revision = self._store.list(route.resource, route.namespace, selector)
        meta: Obj = {"resourceVersion": str(revision)}
        start = _offset(request.query.get("continue"))
        limit = int(request.query.get("limit") or 0)
        items = items[start:]
        if limit and len(items) > limit:
            token = json.dumps({"offset": start + limit}).encode()
            meta["continue"] = base64.urlsafe_b64encode(token).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        kind = route.resource
        out.send_json(
            200,
            {
                "kind": kind.list_kind,
                "apiVersion": kind.api_version,
                "metadata": meta,
                "items": items,
            },
        )

    def _delete(self, request: Request, route: Route, out: Responder, dry_run: bool) -> None:
        options = _decode(request.body) if request.body.strip() else {}
        if not isinstance(options, dict):
            raise errors.bad_request("the body of the request must be DeleteOptions")
        policy = options.get("propagationPolicy") or request.query.get("propagationPolicy")
        orphan = options.get("orphanDependents", request.query.get("orphanDependents"))
        if policy is None and orphan is not None:
            policy = "Orphan" if str(orphan).lower() == "true" else "Background"
        if policy is not None and policy not in POLICIES:
            raise errors.ApiError(
                422,
                "Invalid",
                f'propagationPolicy: Unsupported value: "{policy}": '
                'supported values: "Foreground", "Background", "Orphan"',
            )
        grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
        preconditions = options.get("preconditions") or {}
        resource, name = route.resource, route.name or ""
        obj, gone = self._store.delete(
            resource,
            route.namespace or "",
            name,
            propagation=policy,
            grace=None if grace is None else int(grace),
            uid=preconditions.get("uid"),
            dry_run=dry_run,
        )
        headers = {"Warning": JOB_DELETE_WARNING} if resource is JOBS and policy is None else {}
        if gone and not resource.returns_deleted:
            details = {
                "name": name,
                **({"group": resource.group} if resource.group else {}),
                "kind": resource.plural,
                "uid": obj["metadata"]["uid"],
            }
            body: Obj = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
            out.send_json(200, body, headers)
        else:
            out.send_json(200, obj, headers)

    def _delete_collection(self, request: Request, route: Route, out: Responder) -> None:
        items, revision = self._store.list(route.resource, route.namespace, _selector(request))
        policy = request.query.get("propagationPolicy")
        for item in items:
            meta = item["metadata"]
            try:
                self._store.delete(
                    route.resource,
                    meta["namespace"],
                    meta["name"],
                    propagation=policy,
                    uid=meta["uid"],
                )
            except errors.ApiError:
                continue
        out.send_json(
            200,
            {
                "kind": route.resource.list_kind,
                "apiVersion": route.resource.api_version,
                "metadata": {"resourceVersion": str(revision)},
                "items": items,
            },
        )

    def _watch(self, request: Request, route: Route, out: Responder) -> None:
        with self._store.lock:
            self._store.watchers += 1
        try:
            self._stream_changes(request, route, out)
        finally:
            with self._store.lock:
                self._store.watchers -= 1

    def _stream_changes(self, request: Request, route: Route, out: Responder) -> None:
        selector = _selector(request)
        timeout = request.query.get("timeoutSeconds")
        now = time.monotonic()
        deadline = now + float(timeout) if timeout else float("inf")
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true", "True")
        next_bookmark = _first_bookmark(now, deadline) if bookmarks else float("inf")
        requested = request.query.get("resourceVersion", "")
        store = self._store
        expired: errors.ApiError | None = None
        with store.lock:
            disconnects = store.disconnects
            if requested in ("", "0"):
                items, cursor = store.list(route.resource, route.namespace, selector)
                pending = [_event("ADDED", item) for item in items]
            else:
                cursor, pending = _revision(requested), []
                try:
                    store.history.check(cursor)
                except errors.ApiError as gone:
                    expired = gone
        out.start_stream("application/json")
        if expired is not None:
            out.chunk(_event_error(expired))
            out.end_stream()
            return
        while True:
            for line in pending:
                out.chunk(line)
            pending = []
            with store.lock:
                now = time.monotonic()
                if store.closed or now >= deadline:
                    break
                if store.disconnects != disconnects:
                    if self._faults.abrupt_drops:
                        out.abort()
                        return
                    break
                try:
                    changes = store.history.after(cursor)
                except errors.ApiError as gone:
                    out.chunk(_event_error(gone))
                    break
                if not changes and now >= next_bookmark:
                    next_bookmark = now + BOOKMARK_EVERY
                    pending = [_bookmark(route.resource, store.revision)]
                    continue
                if not changes:
                    store.changed.wait(min(deadline, next_bookmark, now + 1.0) - now)
                    continue
            cursor = changes[-1].revision
            for change in changes:
                if change.resource is route.resource and route.namespace in (
                    None,
                    change.namespace,
                ):
                    kind = _visible(change.type, change.obj, change.previous, selector)
                    if kind:
                        pending.append(_event(kind, change.obj))
        out.end_stream()

    def _log(self, request: Request, route: Route, out: Responder) -> None:
        query = request.query
        source = logs.open_log(
            self._store,
            self._kubelet,
            route.namespace or "",
            route.name or "",
            query.get("container"),
        )
        follow = query.get("follow") in ("true", "1", "True")
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        out.start_stream("text/plain")
        logs.stream(
            source,
            out.chunk,
            follow=follow,
            tail_lines=tail,
            limit_bytes=limit,
            stopping=lambda: self._store.closed,
        )
        out.end_stream()


def namespace_object(name: str) -> Obj:
    """Namespaces exist implicitly; this is what reading one returns."""
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/metadata.name": name},
            "creationTimestamp": timestamp(),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def lookup(api_version: str, plural: str) -> Resource:
    """The resource served at ``/api[s]/<api_version>/.../<plural>``, or a 404."""
    resource = BY_PATH.get((api_version, plural))
    if resource is None:
        raise not_routable()
    return resource


def _visible(kind: str, obj: Obj, previous: Obj | None, selector: Selector) -> str | None:
    now = selector.matches(obj)
    before = previous is not None and selector.matches(previous)
    if kind == "MODIFIED":
        if now and before:
            return "MODIFIED"
        return "ADDED" if now else ("DELETED" if before else None)
    return kind if now else None


def _event(kind: str, obj: Obj) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _first_bookmark(now: float, deadline: float) -> float:
    """Like the watch cache: 2 s before the watch times out, else after a minute."""
    before_timeout = deadline - 2.0
    if deadline == float("inf") or before_timeout <= now:
        return now + BOOKMARK_EVERY
    return min(before_timeout, now + BOOKMARK_EVERY)


def _bookmark(resource: Resource, revision: int) -> bytes:
    """A BOOKMARK event: an object of the watched kind carrying only a resource version."""
    obj = {
        "kind": resource.kind,
        "apiVersion": resource.api_version,
        "metadata": {"resourceVersion": str(revision), "creationTimestamp": None},
    }
    return _event("BOOKMARK", obj)


def _event_error(error: errors.ApiError) -> bytes:
    return json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n"


def _selector(request: Request) -> Selector:
    return Selector.parse(request.query.get("labelSelector"), request.query.get("fieldSelector"))


def _revision(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise errors.bad_request(f'resourceVersion: Invalid value: "{text}"') from None


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        raise errors.bad_request("continue key is not valid") from None


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except json.JSONDecodeError as error:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {error}") from None


def _method_not_allowed(method: str) -> errors.ApiError:
    return errors.ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({method})",
        {},
    )
