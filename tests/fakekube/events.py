"""Core v1 Events, recorded by the fake controllers and kubelet like client-go's recorder does.

Faithful: the v1 ``Event`` shape (``involvedObject``, ``reason``, ``message``, ``type``
Normal/Warning, ``source``, ``reportingComponent``, ``firstTimestamp``/``lastTimestamp``) and
aggregation: the same reason and message about the same object bumps ``count`` instead of
creating another Event. Simplified: no rate limiting, no ``series``, events never expire.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

from tests.fakekube import errors
from tests.fakekube.resources import EVENTS
from tests.fakekube.store import Store, timestamp

Obj = dict[str, Any]


class EventRecorder:
    """Records Events about objects on behalf of one component (``job-controller``, ``kubelet``)."""

    def __init__(self, store: Store, component: str, host: str | None = None) -> None:
        self._store = store
        self._component = component
        self._host = host
        self._lock = threading.Lock()
        self._names: dict[tuple[str, str, str, str], str] = {}

    def normal(self, involved: Obj, reason: str, message: str, field_path: str = "") -> None:
        """Record a Normal event about ``involved``."""
        self._record(involved, "Normal", reason, message, field_path)

    def warning(self, involved: Obj, reason: str, message: str, field_path: str = "") -> None:
        """Record a Warning event about ``involved``."""
        self._record(involved, "Warning", reason, message, field_path)

    def _record(self, involved: Obj, type_: str, reason: str, message: str, path: str) -> None:
        meta = involved["metadata"]
        key = (meta["uid"], type_, reason, message)
        with self._lock:
            name = self._names.get(key)
            if name is not None and self._bump(meta["namespace"], name):
                return
            name = f"{meta['name']}.{secrets.token_hex(8)}"
            self._names[key] = name
        now = timestamp()
        reference = {
            "kind": involved.get("kind"),
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": involved.get("apiVersion"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        if path:
            reference["fieldPath"] = path
        source = {"component": self._component, **({"host": self._host} if self._host else {})}
        event = {
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": reference,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "reportingComponent": self._component,
            "reportingInstance": self._host or "",
        }
        self._store.create(EVENTS, meta["namespace"], event)

    def _bump(self, namespace: str, name: str) -> bool:
        def again(event: Obj) -> None:
            event["count"] = event.get("count", 1) + 1
            event["lastTimestamp"] = timestamp()

        try:
            self._store.update(EVENTS, namespace, name, again)
        except errors.ApiError:
            return False
        return True
