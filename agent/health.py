"""The agent's liveness file: touched whenever the control plane shows it is alive.

A Kubernetes liveness probe runs ``flowyard-agent --probe``, which only looks at the file's
age. An agent whose stream is wedged (no Welcome, no server heartbeat for a while) fails the
probe and is restarted, without the probe needing network access or credentials.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

__all__ = ["HealthFile", "is_fresh"]

logger = logging.getLogger(__name__)


class HealthFile:
    """Touches one file; a failure is logged once, never raised (it must not end a session)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._warned = False

    def touch(self) -> None:
        """Set the file's modification time to now, creating it if needed."""
        try:
            # A metadata update on a local file: cheap enough to do on the event loop. One
            # step (it sets the time of a file that exists, or creates it): a reader never
            # sees the file between its creation and a later setting of its time.
            self.path.touch()
        except OSError as error:
            if not self._warned:
                logger.warning("cannot touch the health file %s: %s", self.path, error)
                self._warned = True
        else:
            self._warned = False


def is_fresh(path: Path, max_age: float, now: float | None = None) -> bool:
    """Whether ``path`` was modified within the last ``max_age`` seconds."""
    try:
        modified = path.stat().st_mtime
    except OSError:
        return False
    current = time.time() if now is None else now
    return current - modified <= max_age
