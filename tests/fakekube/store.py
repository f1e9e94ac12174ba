"""The object store: what etcd plus the generic registry do for every kind.

Every write (from the HTTP API, the controllers or the kubelet) goes through here, so it bumps the
one global resource version and lands in the watch history.

Faithful: ``uid``, ``creationTimestamp``, ``resourceVersion``, ``generation`` (bumped on spec
changes only), ``generateName`` with the real 5-character suffix alphabet, 409 AlreadyExists and
Conflict (stale ``resourceVersion`` in an update or patch), no-op updates that change nothing and
bump nothing, object updates that ignore ``status`` and status updates that change only
``status``, and deletion as the registry does it: a ``Foreground`` or ``Orphan`` delete (or any
object with finalizers) only sets ``deletionTimestamp`` and the finalizer, and the object goes
away when its finalizers are gone; pods on a node are deleted gracefully (``deletionTimestamp``
plus ``deletionGracePeriodSeconds``) until the kubelet confirms.
Simplified: one lock for everything; no managedFields; no field-level immutability beyond
``validation.py``.
"""

from __future__ import annotations

import collections
import copy
import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakekube import errors, validation
from tests.fakekube.history import Change, History
from tests.fakekube.resources import Resource
from tests.fakekube.selectors import Selector

Obj = dict[str, Any]
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
FOREGROUND, ORPHAN = "foregroundDeletion", "orphan"


def timestamp(offset: float = 0.0) -> str:
    """Now (plus ``offset`` seconds) in the API's RFC 3339 form, to the second."""
    moment = datetime.now(UTC) + timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix() -> str:
    """Five characters from the alphabet ``generateName`` uses."""
    return "".join(random.choice(SUFFIX_ALPHABET) for _ in range(5))


class Store:
    """All objects of all kinds, one lock, one resource-version counter, one history."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.history = History()
        self.closed = False
        self.disconnects = 0
        self.watchers = 0
        self._revision = 0
        self._objects: dict[Resource, dict[tuple[str, str], Obj]] = collections.defaultdict(dict)
        self._creates: collections.Counter[str] = collections.Counter()

    @property
    def revision(self) -> int:
        """The current (latest) resource version."""
        return self._revision

    def creates(self, plural: str) -> int:
        """How many objects of ``plural`` were ever created."""
        with self.lock:
            return self._creates[plural]

    def compact(self) -> None:
        """Make every resource version so far too old to watch or list from."""
        with self.lock:
            compacted = self._revision
            self._revision += 1
            self.history.compact(compacted)

    def drop_watches(self) -> None:
        """Tell every open watch to disconnect."""
        with self.lock:
            self.disconnects += 1
            self.changed.notify_all()

    def close(self) -> None:
        """Wake every waiter for shutdown; streams and loops end."""
        with self.lock:
            self.closed = True
            self.changed.notify_all()

    def wait(self, revision: int, disconnects: int, timeout: float) -> None:
        """Block until a change newer than ``revision``, a disconnect, close, or ``timeout``."""
        with self.lock:
            self.changed.wait_for(
                lambda: self._revision > revision or self.disconnects != disconnects or self.closed,
                timeout,
            )

    def create(
        self, resource: Resource, namespace: str, body: Any, *, dry_run: bool = False
    ) -> Obj:
        """Create as the API server does: name, uid, defaults, validation, ADDED."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if (kind and kind != resource.kind) or (
            api_version and api_version != resource.api_version
        ):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({resource.api_version})"
            )
        obj = {"kind": resource.kind, "apiVersion": resource.api_version, **obj}
        obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timestamp()
        for system_field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(system_field, None)
        if resource.has_generation:
            meta["generation"] = 1
        validation.default(resource, obj)
        validation.validate(resource, obj)
        with self.lock:
            key = (namespace, meta["name"])
            if key in self._objects[resource]:
                raise errors.already_exists(resource, meta["name"])
            if dry_run:
                return obj
            self._creates[resource.plural] += 1
            return self._commit("ADDED", resource, obj, None)

    def get(self, resource: Resource, namespace: str, name: str) -> Obj:
        """The object, or 404."""
        with self.lock:
            return copy.deepcopy(self._find(resource, namespace, name))

    def find(self, resource: Resource, namespace: str, name: str) -> Obj | None:
        """The object, or None."""
        with self.lock:
            obj = self._objects[resource].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, resource: Resource, namespace: str | None, selector: Selector | None = None
    ) -> tuple[list[Obj], int]:
        """Matching objects, oldest first, and the resource version the list is consistent at."""
        selector = selector or Selector()
        with self.lock:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in self._objects[resource].items()
                if (namespace is None or ns == namespace) and selector.matches(obj)
            ]
            items.sort(key=lambda obj: int(obj["metadata"]["resourceVersion"]))
            return items, self._revision

    def update(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        change: Callable[[Obj], Obj | None],
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Apply ``change`` to a copy of the object and store the result (if anything changed).

        ``change`` may mutate its argument and return None, or return the new object. A
        ``metadata.resourceVersion`` in the result that is not the current one is a conflict.
        """
        with self.lock:
            current = self._find(resource, namespace, name)
            proposed = copy.deepcopy(current)
            returned = change(proposed)
            new = proposed if returned is None else returned
            if not isinstance(new, dict):
                raise errors.bad_request("the body of the request must be a JSON object")
            requested = (new.get("metadata") or {}).get("resourceVersion")
            if requested and requested != current["metadata"]["resourceVersion"]:
                raise errors.conflict(resource, name)
            new = self._merge_update(resource, current, new, subresource)
            if new == current or dry_run:
                return copy.deepcopy(new)
            meta = new["metadata"]
            releasable = not resource.graceful or not meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionTimestamp") and not meta.get("finalizers") and releasable:
                return self._commit("DELETED", resource, new, current)
            return self._commit("MODIFIED", resource, new, current)

    def _merge_update(
        self, resource: Resource, current: Obj, new: Obj, subresource: str | None
    ) -> Obj:
        if subresource == "status":
            return {**copy.deepcopy(current), "status": new.get("status", {})}
        if subresource == "binding":
            return {**copy.deepcopy(current), "spec": new["spec"], "status": new["status"]}
        new = {**new, "kind": resource.kind, "apiVersion": resource.api_version}
        meta = dict(new.get("metadata") or {})
        for fixed in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
            else:
                meta.pop(fixed, None)
        new["metadata"] = meta
        if resource.has_status:
            new["status"] = copy.deepcopy(current.get("status", {}))
        if resource.kind == "Secret":
            validation.default(resource, new)
        validation.validate(resource, new, current)
        if resource.has_generation and new.get("spec") != current.get("spec"):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        return new

    def delete(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        grace: int | None = None,
        uid: str | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete as the registry does; returns the object's last state and whether it is gone."""
        with self.lock:
            current = self._find(resource, namespace, name)
            meta = current["metadata"]
            if uid is not None and meta["uid"] != uid:
                raise errors.conflict(resource, name)
            if dry_run:
                return copy.deepcopy(current), True
            grace = self._grace(resource, current, grace)
            if meta.get("deletionTimestamp"):
                if resource.graceful and grace == 0 and not meta.get("finalizers"):
                    return self._commit("DELETED", resource, _stamped(current, 0), current), True
                return copy.deepcopy(current), False
            policy = propagation or ("Orphan" if resource.orphans_by_default else "Background")
            finalizers = list(meta.get("finalizers") or [])
            wanted = {"Foreground": FOREGROUND, "Orphan": ORPHAN}.get(policy)
            if wanted and wanted not in finalizers:
                finalizers.append(wanted)
            if not finalizers and not grace:
                # Graceful kinds are stamped even when deleted at once, like BeforeDelete does.
                gone = _stamped(current, 0) if resource.graceful else current
                return self._commit("DELETED", resource, gone, current), True
            new = _stamped(current, grace)
            new["metadata"]["finalizers"] = finalizers
            if not finalizers:
                new["metadata"].pop("finalizers")
            return self._commit("MODIFIED", resource, new, current), False

    def remove(self, resource: Resource, namespace: str, name: str, uid: str) -> bool:
        """Finish a deletion (kubelet or garbage collector): the object is gone for good."""
        with self.lock:
            current = self._objects[resource].get((namespace, name))
            if current is None or current["metadata"]["uid"] != uid:
                return False
            self._commit("DELETED", resource, current, current)
            return True

    @staticmethod
    def _grace(resource: Resource, obj: Obj, requested: int | None) -> int:
        if not resource.graceful:
            return 0
        spec, status = obj.get("spec", {}), obj.get("status", {})
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(requested, 0)
        return int(spec.get("terminationGracePeriodSeconds", 30))

    def _find(self, resource: Resource, namespace: str, name: str) -> Obj:
        obj = self._objects[resource].get((namespace, name))
        if obj is None:
            raise errors.not_found(resource, name)
        return obj

    def _commit(self, kind: str, resource: Resource, new: Obj, previous: Obj | None) -> Obj:
        self._revision += 1
        stored = copy.deepcopy(new)
        stored["metadata"]["resourceVersion"] = str(self._revision)
        meta = stored["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self._objects[resource].pop(key, None)
        else:
            self._objects[resource][key] = stored
        change = Change(self._revision, kind, resource, meta["namespace"], stored, previous)
        self.history.record(change)
        self.changed.notify_all()
        return copy.deepcopy(stored)


def _stamped(obj: Obj, grace: int) -> Obj:
    """A copy marked for deletion ``grace`` seconds from now."""
    stamped = copy.deepcopy(obj)
    stamped["metadata"]["deletionTimestamp"] = timestamp(grace)
    stamped["metadata"]["deletionGracePeriodSeconds"] = grace
    return stamped
