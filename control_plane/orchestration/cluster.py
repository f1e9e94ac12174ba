"""Several control-plane replicas on one database: who is serving, and the passes only one
of them runs at a time (the hints between them are ``bus``).

- **Replicas** (``Replica``). Each process records itself, with where it serves (host,
  port and process id: ``serving_at``, which tells replicas on one machine apart), and
  refreshes its row every ``heartbeat``; a replica not seen for ``timeout`` (killed, cut off) is ended by the others,
  and the agent sessions it held with it, so its agents' runs are recognised as departed and
  the agents may connect elsewhere. A replica that finds itself ended (it was paused longer
  than the timeout) closes its agent streams, whose agents reconnect, and serves on. With
  each heartbeat a replica also records the free credit and last heartbeat of the agents
  connected to it, so that any replica can show them.
- **Singleton passes** (``Singleton``). The scheduler and the reaper run on one replica at a
  time: the holder of their lease, renewed with every heartbeat. A replica takes a lease only
  once it ran out (its holder stopped renewing), which raises its fence; the reaper's writes
  check the fence in their transaction, so a replica that lost its lease while a pass was
  under way commits nothing of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.orchestration import clock
from control_plane.orchestration.bus import Bus
from control_plane.orchestration.changes import Conflict
from control_plane.orchestration.loops import transient
from control_plane.store import cluster as repo
from control_plane.store.db import Database

log = logging.getLogger(__name__)

#: How often a replica refreshes its row and renews its leases.
HEARTBEAT_SECONDS = 2.0
#: A replica not seen for this long is taken for gone; a singleton lease lasts as long.
TIMEOUT_SECONDS = 10.0
#: Ended agent sessions and replicas are kept this long, then deleted (far longer than any
#: grace that asks about them), by a prune every ``PRUNE_EVERY`` heartbeats.
KEEP_ENDED = timedelta(days=1)
PRUNE_EVERY = 150
#: The longest ``replicas.host`` holds.
MAX_HOST_CHARS = 255


def serving_at(port: int) -> str:
    """Where this process serves, as its replica row records it: ``host:port pid N``. The
    machine's name alone is the same for every replica on one machine."""
    where = f":{port} pid {os.getpid()}"
    return socket.gethostname()[: MAX_HOST_CHARS - len(where)] + where


class SessionReporter(Protocol):
    """The agent sessions this replica holds, as their rows should say (``AgentRegistry``)."""

    def activity(self) -> list[repo.SessionActivity]:
        """Sessions whose credit or last heartbeat changed since last recorded."""

    def recorded(self, activity: list[repo.SessionActivity]) -> None:
        """``activity`` was written."""


class LostLease(Conflict):
    """This replica no longer holds a singleton lease it acted under."""


class Singleton:
    """The lease of one pass that runs on one replica at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fence: int | None = None
        self.until: datetime | None = None
        self._held = asyncio.Event()
        self._replica: Replica | None = None
        self._on_gained: list[Callable[[], None]] = []

    def on_gained(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever this replica takes the lease."""
        self._on_gained.append(callback)

    @property
    def held(self) -> bool:
        """Whether this replica holds the lease now."""
        return self.fence is not None and self.until is not None and clock.now() < self.until

    async def acquired(self) -> None:
        """Return once this replica holds the lease."""
        while not self.held:
            self._held.clear()
            await self._held.wait()

    async def check(self, conn: AsyncConnection) -> None:
        """Inside a write transaction: raise ``LostLease`` unless the lease is still ours
        (on PostgreSQL it then stays ours until the transaction ends)."""
        replica = self._replica
        if replica is None:
            return
        if self.fence is None or not await repo.holds_lease(
            conn, replica.db.dialect, self.name, replica.id, self.fence, clock.now()
        ):
            raise LostLease(f"this replica no longer holds the {self.name} lease")

    def _set(self, fence: int | None, until: datetime) -> bool:
        """Record the outcome of a renewal; True if the lease was just gained."""
        gained = fence is not None and not self.held
        self.fence = fence
        self.until = until if fence is not None else None
        if gained:
            self._held.set()
            for callback in self._on_gained:
                callback()
        return gained


class Replica:
    """This control-plane process as one of the replicas serving the database."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        singletons: list[Singleton],
        *,
        on_ended: Callable[[], None],
        heartbeat: timedelta = timedelta(seconds=HEARTBEAT_SECONDS),
        timeout: timedelta = timedelta(seconds=TIMEOUT_SECONDS),
    ) -> None:
        self.id = uuid.uuid4().hex
        self.db = db
        self.bus = bus
        self.singletons = singletons
        self._on_ended = on_ended
        #: The agent sessions held here, whose activity each heartbeat records.
        self.sessions: SessionReporter | None = None
        self._heartbeat = heartbeat
        self._timeout = timeout
        self.registered_at = clock.now()
        #: Where this replica serves (``serving_at``), once registered.
        self.host = ""
        self._beats = 0
        for singleton in singletons:
            singleton._replica = self

    async def register(self, host: str) -> None:
        """Record this replica as serving at ``host`` (``serving_at``), and take the
        singleton leases that are free."""
        now = clock.now()
        async with self.db.write() as conn:
            await repo.end_silent_replicas(conn, now - self._timeout)
            await repo.register_replica(conn, self.id, host, now)
            fences = await self._take_leases(conn, now)
        self.registered_at = now
        self.host = host
        self._leases_taken(fences, now)

    async def alone(self) -> bool:
        """Whether no other replica served while this one started (decided once every
        replica has had time to refresh its row: a replica that was killed a moment ago
        still looks alive until then)."""
        wait = self.registered_at + 1.5 * self._heartbeat - clock.now()
        if wait.total_seconds() > 0:
            await asyncio.sleep(wait.total_seconds())
        async with self.db.read() as conn:
            serving = await repo.live_replicas(conn, self.registered_at)
        return not [replica for replica in serving if replica != self.id]

    async def run(self) -> None:
        """Refresh this replica's row and its leases until cancelled."""
        while True:
            await asyncio.sleep(self._heartbeat.total_seconds())
            try:
                # Shielded like every background unit of work: a stop that cancels this
                # task must not cut a transaction in half (see ``Database.shielded``).
                await self.db.shielded(self._beat(), counted=False)
            except Exception as error:
                if not transient(error):
                    raise
                log.warning("refreshing this replica's leases failed (%s); trying again", error)

    async def stop(self) -> None:
        """Give up the leases and end this replica's row (and its sessions)."""
        now = clock.now()
        async with self.db.write() as conn:
            for singleton in self.singletons:
                await repo.release_lease(conn, singleton.name, self.id, now)
                singleton._set(None, now)
            await repo.end_replica(conn, self.id, now)

    async def _beat(self) -> None:
        """One heartbeat: this replica's row, silent replicas, old rows, the leases and the
        activity of the agents connected here, in one transaction."""
        now = clock.now()
        self._beats += 1
        async with self.db.write() as conn:
            alive = await repo.beat(conn, self.id, now)
            if not alive:
                # Found silent by another replica, which ended our sessions: serve on.
                await repo.reopen_replica(conn, self.id, now)
            ended = await repo.end_silent_replicas(conn, now - self._timeout)
            if self._beats % PRUNE_EVERY == 0:
                await repo.prune(conn, now - KEEP_ENDED)
            fences = await self._take_leases(conn, now)
            activity = self.sessions.activity() if self.sessions else []
            await repo.report_sessions(conn, activity)
        if self.sessions:
            self.sessions.recorded(activity)
        if ended:
            log.warning("replica(s) %s stopped answering; their agent sessions ended", ended)
        if not alive:
            log.warning(
                "this replica was taken for gone (silent over %g s); its agents reconnect",
                self._timeout.total_seconds(),
            )
            self._on_ended()
        self._leases_taken(fences, now)

    async def _take_leases(self, conn: AsyncConnection, now: datetime) -> list[int | None]:
        until = now + self._timeout
        return [
            await repo.take_lease(conn, self.db.dialect, s.name, self.id, now, until)
            for s in self.singletons
        ]

    def _leases_taken(self, fences: list[int | None], now: datetime) -> None:
        until = now + self._timeout
        for singleton, fence in zip(self.singletons, fences, strict=True):
            if singleton._set(fence, until):
                log.info("this replica now runs the %s", singleton.name)
