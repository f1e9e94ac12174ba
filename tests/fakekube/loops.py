"""A level-triggered control loop: run ``sync`` whenever the store changes, and on a short tick.

Every fake controller (scheduler, job controller, garbage collector, kubelet) is a pure "look at
the whole store, fix what differs" function, run by one of these in its own named thread, like
informer-driven controllers but without caches: they read the store directly, so they never
see stale objects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tests.fakekube.store import Store

log = logging.getLogger(__name__)


class Loop:
    """Runs ``sync`` in a thread named ``name`` until :meth:`stop`."""

    def __init__(
        self,
        name: str,
        store: Store,
        sync: Callable[[], None],
        report: Callable[[str], None],
        tick: float = 0.05,
    ) -> None:
        self._store = store
        self._report = report
        self._sync = sync
        self._tick = tick
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end after its current sync (closing the store wakes it at once)."""
        self._stopping.set()

    def join(self) -> None:
        """Wait for the loop's thread to end (after :meth:`stop`)."""
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            revision, disconnects = self._store.revision, self._store.disconnects
            try:
                self._sync()
            except Exception as error:
                # Keep reconciling like a real controller, but make the bug visible.
                log.exception("%s: sync failed", self._thread.name)
                self._report(f"{self._thread.name}: {type(error).__name__}: {error}")
            if self._stopping.is_set():
                return
            self._store.wait(revision, disconnects, self._tick)
