"""Engine heartbeats, written in batches.

An engine says "alive" every few seconds; a thousand running flows would otherwise cost a
thousand write transactions every interval, each queuing for SQLite's one writer. A heartbeat
is a liveness mark, read only by the reaper's silent-engine rule (whose grace is many
heartbeat intervals), so it need not be stored the moment it arrives: ``mark`` only notes it,
and one transaction every ``FLUSH_SECONDS`` stores every heartbeat noted since, with one
UPDATE for all of them. The reaper flushes first before it looks for silent engines, and
the server flushes once more when it stops.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from control_plane.orchestration import clock
from control_plane.orchestration.loops import transient
from control_plane.store import runs as repo
from control_plane.store.db import Database

log = logging.getLogger(__name__)

#: How long a heartbeat may wait to be stored.
FLUSH_SECONDS = 0.5


class Heartbeats:
    """Heartbeats noted in memory, stored together."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # (run id, attempt) -> the latest heartbeat's time
        self._pending: dict[tuple[str, int], datetime] = {}
        self._lock = asyncio.Lock()

    def mark(self, run_id: str, attempt: int) -> None:
        """The engine of this attempt is alive now."""
        self._pending[run_id, attempt] = clock.now()

    async def flush(self) -> None:
        """Store every heartbeat noted so far (one transaction)."""
        async with self._lock:
            if not self._pending:
                return
            taken, self._pending = self._pending, {}
            try:
                async with self._db.write() as conn:
                    await repo.touch_heartbeats(conn, taken)
            except BaseException:
                # Kept for the next flush, unless a newer heartbeat of the attempt came since.
                for key, at in taken.items():
                    self._pending.setdefault(key, at)
                raise

    async def run(self) -> None:
        """Flush every ``FLUSH_SECONDS`` until cancelled (a transient failure is retried)."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self._db.shielded(self.flush(), counted=False)
            except Exception as error:
                if not transient(error):
                    raise
                log.warning("storing engine heartbeats failed (%s); trying again", error)
