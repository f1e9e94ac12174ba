"""Failures a test can inject into the fake API server.

- :meth:`Faults.drop_watches`: every open watch connection breaks now (by default abruptly, as
  when an API server restarts: the client's read fails mid-stream; ``graceful=True`` ends the
  chunked stream cleanly instead, as the server does when a watch times out).
- :meth:`Faults.compact`: every resource version so far becomes too old, as after etcd
  compaction: a watch from one gets an ``ERROR`` event with a 410 Expired ``Status``, a list with
  one gets HTTP 410. Lists and new watches from the current version, and open watches that are
  up to date, keep working.
- :meth:`Faults.fail_next`: the next ``count`` API requests fail with ``status`` (a proper
  ``Status`` body; 429 carries ``Retry-After: 1``). Note that urllib3, under the kubernetes
  client, retries idempotent requests (GET, PUT, DELETE) that get 429/503 with ``Retry-After``
  by itself, so those failures may be consumed without the caller seeing them.
- :meth:`Faults.deny_cluster_scope`: requests that are not namespaced (listing or watching
  Jobs or pods across all namespaces) get 403 Forbidden, as for a client whose RBAC is only
  namespaced Roles.
- :meth:`Faults.hold_create`: the next create (POST) of a resource waits inside the server
  until the test releases it, either applied (the object exists, as when a request reached
  the API server just before its client died) or dropped (the connection breaks, nothing is
  created). A test uses the wait to kill the client at exactly that moment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tests.fakekube import errors
from tests.fakekube.store import Store


@dataclass
class Hold:
    """A create request parked in the server until :meth:`release`."""

    plural: str
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    apply: bool = False

    def release(self, *, apply: bool) -> None:
        """Let the request go on (``apply``) or break its connection with nothing created."""
        self.apply = apply
        self.released.set()


class Faults:
    """Switches a test flips to make the fake cluster misbehave like a real one can."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._holds: list[Hold] = []
        self.abrupt_drops = True
        self.cluster_scope_denied = False

    def hold_create(self, plural: str) -> Hold:
        """Park the next create of ``plural`` (e.g. ``"jobs"``) until the hold is released."""
        hold = Hold(plural)
        with self._lock:
            self._holds.append(hold)
        return hold

    def held(self, plural: str) -> Hold | None:
        """The hold for a create of ``plural`` being served, if one is waiting for it."""
        with self._lock:
            for hold in self._holds:
                if hold.plural == plural:
                    self._holds.remove(hold)
                    return hold
        return None

    def deny_cluster_scope(self, denied: bool = True) -> None:
        """Answer every request that is not namespaced with 403 Forbidden (``denied``)."""
        self.cluster_scope_denied = denied

    def drop_watches(self, *, graceful: bool = False) -> None:
        """Close every open watch connection now."""
        self.abrupt_drops = not graceful
        self._store.drop_watches()

    def compact(self) -> None:
        """Make every resource version up to now too old (410 Gone) to watch or list from."""
        self._store.compact()

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` API requests with HTTP ``status``."""
        with self._lock:
            self._pending.extend([status] * count)

    def take(self) -> errors.ApiError | None:
        """The failure for the request being served, if one is pending."""
        with self._lock:
            if not self._pending:
                return None
            return errors.injected(self._pending.pop(0))
