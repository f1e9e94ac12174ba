"""Keeping an up-to-date view of one resource in one namespace: list, then watch.

The shape is a reconnect loop around one stream (:meth:`ObjectWatch.run`)::

    list (resourceVersion R) ─▶ watch from R ─▶ events ... stream ends or drops
                   ▲                  ▲                              │
                   │                  └──── watch from the last R ◀──┤ (ended, dropped, 5xx)
                   └──────────── 410 Gone: R is too old ◀────────────┘

Every watch is namespaced and label-selected (the agent's pool), never cluster-wide. A list
replaces the cache: objects that vanished while no watch was open are reported as DELETED,
and every listed object is reported again, so the runtime re-evaluates what it missed. After
each list the ``on_relist`` callback learns when that list started, so objects created
before it and absent from it can be declared gone too (see the runtime).

Failed requests are retried with jittered backoff for as long as the watch runs; the last
error is kept in :attr:`ObjectWatch.last_error` for the runtime's start-up check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent import metrics
from agent.backoff import Backoff
from agent.errors import KubernetesError
from agent.kubernetes.client import KubeClient, Resource
from agent.kubernetes.objects import object_name
from agent.settings import KubernetesSettings

__all__ = ["ADDED", "DELETED", "MODIFIED", "ObjectWatch", "resource_version"]

logger = logging.getLogger(__name__)

Object = dict[str, Any]

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
BOOKMARK = "BOOKMARK"

# A stream that ends this soon without an event counts as a failure, so that a server that
# keeps closing watches at once is not hammered in a tight loop.
_SHORT_STREAM_SECONDS = 1.0

ChangeCallback = Callable[["ObjectWatch", str, Object], None]
"""Called with the watch, the event type (ADDED, MODIFIED, DELETED) and the object."""
RelistCallback = Callable[["ObjectWatch", float], None]
"""Called after each list with the event-loop time at which the list request started."""


def resource_version(obj: Mapping[str, Any]) -> str:
    """``metadata.resourceVersion`` (empty if missing)."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class ObjectWatch:
    """A cache of one resource in one namespace, matching one label selector."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str,
        selector: str,
        settings: KubernetesSettings,
        on_change: ChangeCallback,
        on_relist: RelistCallback | None = None,
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.selector = selector
        self.objects: dict[str, Object] = {}
        """The cache: name to the latest object seen."""
        self.synced = asyncio.Event()
        """Set once the first list succeeded."""
        self.last_error: KubernetesError | None = None
        """What made the latest request fail; None after a successful list."""
        self._progress = asyncio.Event()
        # Where the next watch starts: the newest resourceVersion seen; None: list first.
        self._version: str | None = None
        self._client = client
        self._settings = settings
        self._on_change = on_change
        self._on_relist = on_relist

    def __str__(self) -> str:
        return f"{self.resource.value} in {self.namespace} ({self.selector})"

    async def run(self) -> None:
        """List and watch until cancelled; never returns otherwise."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self._settings.watch_backoff)
        expired_in_a_row = 0
        ended, expired, failed = (
            metrics.WATCH_RESTARTS.labels(self.resource.value, reason)
            for reason in ("ended", "expired", "failed")
        )
        while True:
            try:
                if self._version is None:
                    self._version = await self._list()
                started = loop.time()
                events = await self._watch()
                ended.inc()
                if events or loop.time() - started >= _SHORT_STREAM_SECONDS:
                    backoff.reset()
                    expired_in_a_row = 0
                    continue
                logger.debug("watch of %s ended at once; resuming after a pause", self)
            except KubernetesError as error:
                self.last_error = error
                self._progress.set()
                if error.status == 410:
                    expired.inc()
                    self._version = None
                    expired_in_a_row += 1
                    logger.info("watch of %s expired (%s); listing again", self, error.reason)
                    if expired_in_a_row == 1:
                        continue
                else:
                    failed.inc()
                    logger.warning("watch of %s failed: %s", self, error)
            await asyncio.sleep(backoff.next_delay())

    async def wait_synced(self, fatal: frozenset[int] = frozenset({401, 403})) -> None:
        """Wait for the first successful list; raise its error if its status is ``fatal``.

        Other errors are retried by :meth:`run`, so this keeps waiting through them.
        """
        while not self.synced.is_set():
            error = self.last_error
            if error is not None and error.status in fatal:
                raise error
            self._progress.clear()
            await self._progress.wait()

    async def _list(self) -> str:
        started = asyncio.get_running_loop().time()
        listing = await self._client.list(self.resource, self.namespace, self.selector)
        fresh = {object_name(obj): obj for obj in listing.items}
        gone = [obj for name, obj in self.objects.items() if name not in fresh]
        self.objects = fresh
        self.last_error = None
        self.synced.set()
        self._progress.set()
        logger.debug("listed %s: %d object(s), %d gone", self, len(fresh), len(gone))
        for obj in gone:
            self._on_change(self, DELETED, obj)
        for obj in fresh.values():
            self._on_change(self, MODIFIED, obj)
        if self._on_relist is not None:
            self._on_relist(self, started)
        return listing.resource_version

    async def _watch(self) -> int:
        """Follow one stream from :attr:`_version`, advancing it; return the event count."""
        assert self._version is not None
        events = 0
        stream = self._client.watch(
            self.resource,
            self.namespace,
            self.selector,
            self._version,
            self._settings.watch_timeout,
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                obj = event.object
                # Advanced per event: a stream that breaks resumes right after the last one.
                self._version = resource_version(obj) or self._version
                if event.type == BOOKMARK:
                    continue
                name = object_name(obj)
                if event.type == DELETED:
                    self.objects.pop(name, None)
                elif event.type in (ADDED, MODIFIED):
                    self.objects[name] = obj
                else:
                    logger.debug("ignoring a %s event in the watch of %s", event.type, self)
                    continue
                events += 1
                self._on_change(self, event.type, obj)
        return events
