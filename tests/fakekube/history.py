"""The change log behind watches: every write, in resource-version order, until compacted.

Faithful: one resource-version sequence shared by every kind (like etcd's revision); a watch
from resource version N receives every change with a higher version; versions older than the
oldest retained change are "too old" (410 Gone, reason Expired), which is what etcd compaction
does to a real cluster; a watch that is already streaming and up to date survives compaction, as
it does behind the watch cache. Simplified: the log is an in-memory list capped at ``limit`` changes; the
oldest half is dropped (compacted) when it overflows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from tests.fakekube.errors import expired
from tests.fakekube.resources import Resource

Obj = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One write: the object after it (the last state for DELETED) and before it."""

    revision: int
    type: str
    resource: Resource
    namespace: str
    obj: Obj
    previous: Obj | None


class History:
    """Changes after the compaction point, oldest first."""

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._changes: list[Change] = []
        self._revisions: list[int] = []
        self.oldest_watchable = 0
        self._dropped_through = 0

    def record(self, change: Change) -> None:
        """Append a change; drop the oldest half when over the limit."""
        self._changes.append(change)
        self._revisions.append(change.revision)
        if len(self._changes) > self._limit:
            keep = self._limit // 2
            self.oldest_watchable = self._dropped_through = self._revisions[-keep - 1]
            del self._changes[:-keep]
            del self._revisions[:-keep]

    def after(self, revision: int) -> list[Change]:
        """Changes newer than ``revision`` for a watch already streaming from it.

        410 Gone only if some of those changes were dropped: a watch that is up to date
        survives compaction, as it does behind the real API server's watch cache.
        """
        if revision < self._dropped_through:
            raise expired(revision, self.oldest_watchable)
        return self._changes[bisect.bisect_right(self._revisions, revision) :]

    def check(self, revision: int) -> None:
        """Raise 410 Gone if a list or a new watch cannot start from ``revision``."""
        if revision < self.oldest_watchable:
            raise expired(revision, self.oldest_watchable)

    def compact(self, revision: int) -> None:
        """Forget every change up to ``revision``; watching from any of them answers 410."""
        self.oldest_watchable = max(self.oldest_watchable, revision + 1)
        keep = bisect.bisect_right(self._revisions, revision)
        if keep:
            self._dropped_through = max(self._dropped_through, self._revisions[keep - 1])
        del self._changes[:keep]
        del self._revisions[:keep]
